//! What `gpu-check` prints, and the JSON lines `--json` writes.

use resnet_imagenet::measure::device_check::Record;
use resnet_imagenet::measure::parity::{self, Comparison};
use resnet_imagenet::measure::timing;
use std::io::Write;

/// Prints each record and writes it as a JSON line to `--json`.
pub struct Out {
    pub json: Option<std::fs::File>,
    /// The first failed `--json` write (the run goes on; the exit code says so).
    pub json_error: Option<String>,
    /// The device's name in messages.
    pub device: &'static str,
    /// The comparisons' (batch, side, steps).
    pub compare: (usize, usize, usize),
}

impl Out {
    pub fn emit(&mut self, r: Record) {
        match &r {
            Record::Compare(c) => print_comparison(c, self.device, self.compare),
            Record::Time(t) => print_steps(t, self.device),
            Record::Ops(t) => print_ops(t, self.device),
            Record::Loader(l) => print_loader(l, self.device),
            Record::Failed { what, error } => println!("{what}: FAILED: {error}"),
        }
        self.record(&r);
    }

    fn record(&mut self, r: &Record) {
        if let Some(f) = &mut self.json {
            let written = serde_json::to_string(r)
                .map_err(|e| e.to_string())
                .and_then(|line| writeln!(f, "{line}").map_err(|e| e.to_string()));
            if let Err(e) = written {
                eprintln!("gpu-check: writing --json: {e}; no more records are written there");
                self.json = None;
                self.json_error.get_or_insert(e);
            }
        }
    }
}

/// Prints a comparison: the device against the CPU, and the CPU against
/// itself on a slightly perturbed input (the network's own sensitivity).
fn print_comparison(c: &Comparison, device: &str, (b, s, k): (usize, usize, usize)) {
    let w = |x: Option<&parity::TensorError>| {
        x.map_or("-".into(), |x| format!("{:.1e} ({})", x.rel, x.path))
    };
    let verdict = if c.passed() { ": PASS" } else { ": FAIL" };
    let lines = [
        (
            &c.test,
            format!("compare {} b{b} {s}x{s} cpu vs {device}", c.model),
            verdict,
        ),
        (
            &c.sensitivity,
            "  cpu vs cpu on input x (1 + 1e-6)".into(),
            "",
        ),
    ];
    for (d, what, verdict) in lines {
        println!(
            "{what}: logits {:.1e}, loss {:.1e}, gradients {:.1e} (worst {}), after {k} steps {:.1e} (worst {}){verdict}",
            d.logits,
            d.loss,
            d.gradients_all,
            w(d.worst_gradient()),
            d.after_steps_all,
            w(d.worst_after_steps()),
        );
    }
}

/// Prints the timed steps of one model and batch.
fn print_steps(t: &timing::StepTimes, device: &str) {
    println!(
        "time {} b{} {s}x{s} on {device}: {:.1} ms/step (forward {:.1}, backward {:.1}, update {:.1}), {:.1} img/s (median of {}), memory {}",
        t.model,
        t.batch,
        t.median_s * 1e3,
        t.forward_s * 1e3,
        t.backward_s * 1e3,
        t.update_s * 1e3,
        t.images_per_sec,
        t.step_s.len(),
        mib(t.memory_bytes),
        s = t.side
    );
}

/// Prints the pieces of a first-stage layer.
fn print_ops(t: &timing::OpTimes, device: &str) {
    for (op, s) in &t.ops {
        println!(
            "op b{} 56x56x64 on {device}: {op}: {:.2} ms",
            t.batch,
            s * 1e3
        );
    }
}

/// Prints training fed by the real loader.
fn print_loader(l: &timing::LoaderTraining, device: &str) {
    println!(
        "loader+train {} b{} on {device}, {} workers: {:.1} img/s, waited for data {:.1}% of {:.1} s; loader alone {:.0} img/s",
        l.model,
        l.batch,
        l.workers,
        l.images_per_sec,
        100.0 * l.wait_fraction,
        l.wall_s,
        l.loader_alone_images_per_sec
    );
}

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| {
        format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
    })
}

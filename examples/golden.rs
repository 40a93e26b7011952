//! Our half of the torchvision golden check (run by tools/torchvision-golden.sh):
//! `cargo run --release --example golden -- DIR MODEL`.
//!
//! 1. Loads torchvision's state_dict (DIR/torchvision.safetensors) into our
//!    model and compares our eval-mode logits with torchvision's on the same
//!    input (DIR/io.safetensors); fails above 1e-4 relative error.
//! 2. Builds a fresh model of ours with random BatchNorm statistics, saves it
//!    (DIR/ours.safetensors) and its logits (DIR/ours_io.safetensors) for
//!    torchvision to load and compare.

use dfdx::prelude::*;
use resnet_imagenet::model::resnet::{ResNet18, ResNet34, ResNet50V15, ResNet101V15, ResNet152V15};
use resnet_imagenet::model::state::{self, assign_tensors, read_safetensors, write_safetensors};
use resnet_imagenet::model::zoo::{Input, Network, NetworkUser};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Golden(PathBuf);

fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |e, (x, y)| e.max((x - y).abs())) / m
}

impl NetworkUser<Cpu> for Golden {
    type Output = Result<(), String>;
    fn run<M: Network<Cpu>>(self) -> Self::Output {
        let dir = self.0;
        let dev = Cpu::seed_from_u64(1);
        let io = read_safetensors(&dir.join("io.safetensors")).map_err(|e| e.to_string())?;
        let (xs, xv) = io.tensors["x_nhwc"].clone();
        let (_, want) = io.tensors["logits"].clone();
        let x =
            || -> Input<Cpu> { dev.tensor_from_vec(xv.clone(), (xs[0], xs[1], xs[2], Const::<3>)) };

        let mut model = M::build(&dev);
        state::load_safetensors(&mut model, &dir.join("torchvision.safetensors"))
            .map_err(|e| e.to_string())?;
        let got = model.forward_eval(x()).as_vec();
        let err = max_rel_err(&got, &want);
        println!("ours with torchvision's weights: max relative logit error {err:.2e}");
        if err > 1e-4 {
            return Err(format!("{err} > 1e-4"));
        }

        // The other direction: our weights, random BN statistics.
        let mut ours = M::build(&dev);
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut src = |path: &str, shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v = if path.ends_with("running_mean") {
                (0..n).map(|_| next() - 0.5).collect()
            } else if path.ends_with("running_var") {
                (0..n).map(|_| 0.5 + 1.5 * next()).collect()
            } else if path.ends_with("bn.scale") {
                (0..n).map(|_| 0.5 + next()).collect()
            } else {
                return Ok(None);
            };
            Ok(Some(v))
        };
        assign_tensors(&mut ours, &mut src).map_err(|e| e.to_string())?;
        state::save_safetensors(&ours, &dir.join("ours.safetensors"), None)
            .map_err(|e| e.to_string())?;
        let logits = ours.forward_eval(x());
        let shape: Vec<usize> = vec![logits.shape().0, logits.shape().1];
        let t = BTreeMap::from([
            ("x_nhwc".to_string(), (xs.clone(), xv.clone())),
            ("logits".to_string(), (shape, logits.as_vec())),
        ]);
        write_safetensors(&t, &[], None, &dir.join("ours_io.safetensors"))
            .map_err(|e| e.to_string())?;
        println!("wrote {}", dir.join("ours.safetensors").display());
        Ok(())
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (dir, model) = match a.as_slice() {
        [d, m] => (Path::new(d).to_owned(), m.clone()),
        _ => {
            eprintln!("usage: golden DIR MODEL");
            std::process::exit(2)
        }
    };
    // torchvision's names for these: resnet18, resnet34, resnet50/101/152 (stride on the 3x3).
    let g = Golden(dir);
    let result = match model.as_str() {
        "resnet18" => g.run::<ResNet18<1000, f32, Cpu>>(),
        "resnet34" => g.run::<ResNet34<1000, f32, Cpu>>(),
        "resnet50-v1.5" => g.run::<ResNet50V15<1000, f32, Cpu>>(),
        "resnet101-v1.5" => g.run::<ResNet101V15<1000, f32, Cpu>>(),
        "resnet152-v1.5" => g.run::<ResNet152V15<1000, f32, Cpu>>(),
        other => {
            eprintln!("golden: no torchvision counterpart for {other}");
            std::process::exit(2)
        }
    };
    if let Err(e) = result {
        eprintln!("FAIL: {e}");
        std::process::exit(1)
    }
}

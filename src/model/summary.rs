//! Per-layer summary: output shape, parameters and multiply-adds.
//!
//! Multiply-adds count convolutions and the classifier, as the paper's
//! "FLOPs" do (ResNet-50: 3.8 x 10^9 at 224x224); BatchNorm, ReLU, pooling
//! and additions are left out. Parameters include BatchNorm's scale and shift.
//!
//! Each block's rows come from its declaration ([`super::blocks`]'s
//! `block!`); the networks add their stem, pooling and classifier rows.

use dfdx::nn::modules::Linear;
use dfdx::prelude::{Device, Dtype};
use std::fmt::Write;

/// One line of a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// torchvision name of the layer (`layer1.0.conv1`).
    pub name: String,
    /// What it is (`conv 3x3/1, 64`).
    pub op: String,
    /// Output `(H, W, C)`.
    pub out: (usize, usize, usize),
    /// Parameters (conv weight + BN scale and shift; fc weight + bias).
    pub params: usize,
    /// Multiply-adds for one image.
    pub macs: usize,
}

/// Something that can list its layers for an input of `h x w`.
pub trait Describe {
    /// Appends rows under `prefix` and returns the output `(h, w)`.
    fn describe(&self, prefix: &str, hw: (usize, usize), rows: &mut Vec<Row>) -> (usize, usize);
}

/// `prefix.name`, or `name` at the top.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The classifier's row: average pool, then fully connected to the classes.
impl<const I: usize, const O: usize, E: Dtype, D: Device<E>> Describe for Linear<I, O, E, D> {
    fn describe(&self, prefix: &str, _: (usize, usize), rows: &mut Vec<Row>) -> (usize, usize) {
        rows.push(Row {
            name: prefix.to_string(),
            op: format!("avg pool, fc {I} -> {O}"),
            out: (1, 1, O),
            params: I * O + O,
            macs: I * O,
        });
        (1, 1)
    }
}

/// Totals of a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Parameters.
    pub params: usize,
    /// Multiply-adds per image.
    pub macs: usize,
}

/// The rows of `model` at `h x w` input and their totals.
pub fn summarize(model: &impl Describe, h: usize, w: usize) -> (Vec<Row>, Totals) {
    let mut rows = Vec::new();
    model.describe("", (h, w), &mut rows);
    let totals = Totals {
        params: rows.iter().map(|r| r.params).sum(),
        macs: rows.iter().map(|r| r.macs).sum(),
    };
    (rows, totals)
}

/// A printable table: one line per layer, then `parameters: N` and `multiply-adds: M`.
pub fn table(model: &impl Describe, h: usize, w: usize) -> String {
    let (rows, totals) = summarize(model, h, w);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {:<26} {:>16} {:>12} {:>16}",
        "layer", "op", "output (HxWxC)", "params", "mult-adds"
    );
    for r in &rows {
        let _ = writeln!(
            s,
            "{:<28} {:<26} {:>16} {:>12} {:>16}",
            r.name,
            r.op,
            format!("{}x{}x{}", r.out.0, r.out.1, r.out.2),
            r.params,
            r.macs
        );
    }
    let _ = writeln!(s, "input: {h}x{w}x3");
    let _ = writeln!(s, "parameters: {}", totals.params);
    let _ = writeln!(
        s,
        "multiply-adds: {} ({:.2} G)",
        totals.macs,
        totals.macs as f64 / 1e9
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cifar::ResNet20;
    use crate::model::resnet::*;
    use dfdx::prelude::*;

    fn check<M: Describe + TensorCollection<f32, Cpu>>(m: &M, gflops: f64) {
        let (_, t) = summarize(m, 224, 224);
        assert_eq!(t.params, m.num_trainable_params());
        let g = t.macs as f64 / 1e9;
        assert!(
            (g - gflops).abs() / gflops < 0.03,
            "{g:.3} G vs the paper's {gflops}"
        );
    }

    #[test]
    fn totals_match_the_paper_and_the_parameter_count() {
        let dev: Cpu = Default::default();
        check(&ResNet18::<1000, f32, Cpu>::build(&dev), 1.8);
        check(&ResNet34::<1000, f32, Cpu>::build(&dev), 3.6);
        check(&ResNet50::<1000, f32, Cpu>::build(&dev), 3.8);
        check(&ResNet101::<1000, f32, Cpu>::build(&dev), 7.6);
        check(&ResNet152::<1000, f32, Cpu>::build(&dev), 11.3);
        // Plain-34 has the same 3.6 G as ResNet-34 (the paper: "3.6 billion FLOPs").
        check(&Plain34::<1000, f32, Cpu>::build(&dev), 3.6);
        let r20 = ResNet20::<10, f32, Cpu>::build(&dev);
        let (rows, t) = summarize(&r20, 32, 32);
        assert_eq!(t.params, 269_722);
        assert_eq!(rows.last().unwrap().out, (1, 1, 10));
        assert_eq!(rows[rows.len() - 2].out, (8, 8, 64));
        assert!(table(&r20, 32, 32).contains("parameters: 269722"));
    }
}

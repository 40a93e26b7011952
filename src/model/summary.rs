//! Per-layer summary: output shape, parameters and multiply-adds.
//!
//! Multiply-adds count convolutions and the classifier, as the paper's
//! "FLOPs" do (ResNet-50: 3.8 x 10^9 at 224x224); BatchNorm, ReLU, pooling
//! and additions are left out. Parameters include BatchNorm's scale and shift.

use super::cifar::{BasicA, CifarNet};
use super::conv::conv_out;
use super::resnet::{
    Basic, BasicDown, Bottleneck, BottleneckDown, BottleneckDownV15, ConvBn, PlainBasic, ResNet,
    Stage,
};
use dfdx::prelude::*;
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

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl<const I: usize, const O: usize, const K: usize, const S: usize, const P: usize, E, D> Describe
    for ConvBn<I, O, K, S, P, E, D>
where
    E: Dtype,
    D: Device<E>,
{
    fn describe(
        &self,
        prefix: &str,
        (h, w): (usize, usize),
        rows: &mut Vec<Row>,
    ) -> (usize, usize) {
        let (oh, ow) = (conv_out(h, K, S, P), conv_out(w, K, S, P));
        rows.push(Row {
            name: prefix.to_string(),
            op: format!("conv {K}x{K}/{S}, {O} + BN"),
            out: (oh, ow, O),
            params: O * I * K * K + 2 * O,
            macs: oh * ow * O * I * K * K,
        });
        (oh, ow)
    }
}

macro_rules! describe_block {
    ($ty:ident < $($p:ident),* > { $($field:ident => $name:literal),+ } $(, down => $down:literal)?) => {
        impl<$(const $p: usize,)* E: Dtype, D: Device<E>> Describe for $ty<$($p,)* E, D> {
            fn describe(&self, prefix: &str, hw: (usize, usize), rows: &mut Vec<Row>) -> (usize, usize) {
                let mut out = hw;
                $( out = self.$field.describe(&join(prefix, $name), out, rows); )+
                $( self.down.describe(&join(prefix, $down), hw, rows); )?
                out
            }
        }
    };
}

describe_block!(Basic<C> { a => "conv1", b => "conv2" });
describe_block!(PlainBasic<I, O, S> { a => "conv1", b => "conv2" });
describe_block!(BasicA<I, O, S> { a => "conv1", b => "conv2" });
describe_block!(BasicDown<I, O, S> { a => "conv1", b => "conv2" }, down => "downsample");
describe_block!(Bottleneck<C, M> { a => "conv1", b => "conv2", c => "conv3" });
describe_block!(BottleneckDown<I, M, O, S> { a => "conv1", b => "conv2", c => "conv3" }, down => "downsample");
describe_block!(BottleneckDownV15<I, M, O, S> { a => "conv1", b => "conv2", c => "conv3" }, down => "downsample");

impl<const I: usize, const O: usize, First, Rest, const R: usize, E, D> Describe
    for Stage<I, O, First, Rest, R, E, D>
where
    E: Dtype,
    D: Device<E>,
    First: Describe,
    Rest: Describe,
{
    fn describe(&self, prefix: &str, hw: (usize, usize), rows: &mut Vec<Row>) -> (usize, usize) {
        let mut hw = self.first.describe(&join(prefix, "0"), hw, rows);
        for (i, b) in self.rest.modules.iter().enumerate() {
            hw = b.describe(&join(prefix, &(i + 1).to_string()), hw, rows);
        }
        hw
    }
}

fn fc_row(c: usize, n: usize, rows: &mut Vec<Row>) {
    rows.push(Row {
        name: "fc".into(),
        op: format!("avg pool, fc {c} -> {n}"),
        out: (1, 1, n),
        params: c * n + n,
        macs: c * n,
    });
}

impl<
    L1: Describe,
    L2: Describe,
    L3: Describe,
    L4: Describe,
    const C1: usize,
    const C2: usize,
    const C3: usize,
    const C4: usize,
    const N: usize,
    E: Dtype,
    D: Device<E>,
> Describe for ResNet<L1, L2, L3, L4, C1, C2, C3, C4, N, E, D>
{
    fn describe(&self, prefix: &str, hw: (usize, usize), rows: &mut Vec<Row>) -> (usize, usize) {
        let (h, w) = self.stem.describe(&join(prefix, "conv1"), hw, rows);
        let hw = (conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1));
        rows.push(Row {
            name: join(prefix, "maxpool"),
            op: "max pool 3x3/2".into(),
            out: (hw.0, hw.1, 64),
            params: 0,
            macs: 0,
        });
        let hw = self.layer1.describe(&join(prefix, "layer1"), hw, rows);
        let hw = self.layer2.describe(&join(prefix, "layer2"), hw, rows);
        let hw = self.layer3.describe(&join(prefix, "layer3"), hw, rows);
        let hw = self.layer4.describe(&join(prefix, "layer4"), hw, rows);
        fc_row(C4, N, rows);
        hw
    }
}

impl<L1: Describe, L2: Describe, L3: Describe, const N: usize, E: Dtype, D: Device<E>> Describe
    for CifarNet<L1, L2, L3, N, E, D>
{
    fn describe(&self, prefix: &str, hw: (usize, usize), rows: &mut Vec<Row>) -> (usize, usize) {
        let hw = self.stem.describe(&join(prefix, "conv1"), hw, rows);
        let hw = self.layer1.describe(&join(prefix, "layer1"), hw, rows);
        let hw = self.layer2.describe(&join(prefix, "layer2"), hw, rows);
        let hw = self.layer3.describe(&join(prefix, "layer3"), hw, rows);
        fc_row(64, N, rows);
        hw
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

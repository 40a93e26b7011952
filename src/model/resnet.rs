//! The ImageNet ResNets of the paper's Table 1, and their variants.
//!
//! A stem (7x7/2 conv, 3x3/2 max pool), four stages of blocks from
//! [`super::blocks`], global average pooling and a fully connected layer.
//! Blocks come in two kinds, as in the paper with shortcut option B: identity
//! blocks (`Basic`, `Bottleneck`) and the first block of a stage, which
//! projects the shortcut with a strided 1x1 convolution (`BasicDown`,
//! `BottleneckDown`). Bottlenecks put the stride on the first 1x1
//! convolution (the paper's v1); the `V15` aliases put it on the 3x3.

use super::blocks::{
    Basic, BasicA, BasicDown, BnTape, Bottleneck, BottleneckDown, BottleneckDownV15, ConvBn, Layer,
    PlainBasic, Stage, conv_bn_fields,
};
use super::pool::{global_avg_pool, max_pool};
use super::shape::{Act, Halvable};
use super::summary::{Describe, Row, join};
use dfdx::nn::modules::Linear;
use dfdx::prelude::*;

/// An ImageNet ResNet: 7x7/2 stem, 3x3/2 max pool, four stages, global
/// average pool, and the classifier `Fc` (a `Linear` from the last stage's
/// channels to the classes). The stages' channels chain by type
/// ([`Layer::In`] = the previous [`Layer::Out`]).
#[derive(Debug, Clone)]
pub struct ResNet<L1, L2, L3, L4, Fc, E: Dtype, D: Device<E>> {
    /// Stem: 7x7/2 conv, 64 channels, + BN (`conv1`, `bn1`).
    pub stem: ConvBn<3, 64, 7, 2, 3, E, D>,
    /// Stage 1 (56x56 at 224 input).
    pub layer1: L1,
    /// Stage 2 (28x28).
    pub layer2: L2,
    /// Stage 3 (14x14).
    pub layer3: L3,
    /// Stage 4 (7x7).
    pub layer4: L4,
    /// Classifier.
    pub fc: Fc,
}

impl<L1, L2, L3, L4, Fc, E, D> TensorCollection<E, D> for ResNet<L1, L2, L3, L4, Fc, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
    D: Device<E>,
    rand_distr::StandardNormal: rand_distr::Distribution<E>,
    L1: TensorCollection<E, D>,
    L2: TensorCollection<E, D>,
    L3: TensorCollection<E, D>,
    L4: TensorCollection<E, D>,
    Fc: TensorCollection<E, D>,
{
    type To<E2: Dtype, D2: Device<E2>> = ResNet<
        L1::To<E2, D2>,
        L2::To<E2, D2>,
        L3::To<E2, D2>,
        L4::To<E2, D2>,
        Fc::To<E2, D2>,
        E2,
        D2,
    >;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                conv_bn_fields!(Self, stem, "conv1", "bn1"),
                Self::module("layer1", |s| &s.layer1, |s| &mut s.layer1),
                Self::module("layer2", |s| &s.layer2, |s| &mut s.layer2),
                Self::module("layer3", |s| &s.layer3, |s| &mut s.layer3),
                Self::module("layer4", |s| &s.layer4, |s| &mut s.layer4),
                Self::module("fc", |s| &s.fc, |s| &mut s.fc),
            ),
            |(stem, layer1, layer2, layer3, layer4, fc)| ResNet {
                stem: ConvBn {
                    conv: stem.0,
                    bn: stem.1,
                },
                layer1,
                layer2,
                layer3,
                layer4,
                fc,
            },
        )
    }
}

impl<L1, L2, L3, L4, Fc, E, D> ResNet<L1, L2, L3, L4, Fc, E, D>
where
    E: Dtype,
    D: Device<E>,
    L1: Layer<E, D, In = Const<64>>,
    L2: Layer<E, D, In = L1::Out>,
    L3: Layer<E, D, In = L2::Out>,
    L4: Layer<E, D, In = L3::Out>,
{
    /// Logits for a batch of NHWC images `(B, H, W, 3)`. A traced input
    /// trains (BatchNorm uses and updates batch statistics); an untraced one
    /// evaluates. Any input size works (global average pooling).
    pub fn forward<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, 3, E, D, T>,
    ) -> Fc::Output
    where
        Fc: Module<Tensor<(B, L4::Out), E, D, T>>,
    {
        let x = self.stem.fwd(x).relu();
        let x = max_pool::<3, 2, 1, B, _, _, 64, E, D, T>(x);
        let x = self
            .layer4
            .fwd(self.layer3.fwd(self.layer2.fwd(self.layer1.fwd(x))));
        self.fc.forward(global_avg_pool(x))
    }
}

impl<L1, L2, L3, L4, Fc, E, D> Describe for ResNet<L1, L2, L3, L4, Fc, E, D>
where
    L1: Describe,
    L2: Describe,
    L3: Describe,
    L4: Describe,
    Fc: Describe,
    E: Dtype,
    D: Device<E>,
{
    fn describe(&self, prefix: &str, hw: (usize, usize), rows: &mut Vec<Row>) -> (usize, usize) {
        let (h, w) = self.stem.describe(&join(prefix, "conv1"), hw, rows);
        let hw = (super::conv_out(h, 3, 2, 1), super::conv_out(w, 3, 2, 1));
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
        self.fc.describe(&join(prefix, "fc"), hw, rows);
        hw
    }
}

/// The stage types of Table 1.
pub type BasicStage<const I: usize, const O: usize, const S: usize, const R: usize, E, D> =
    Stage<BasicDown<I, O, S, E, D>, Basic<O, E, D>, R, E, D>;
/// A bottleneck stage: `I -> O` channels with bottleneck width `M`.
pub type BottleneckStage<
    const I: usize,
    const M: usize,
    const O: usize,
    const S: usize,
    const R: usize,
    E,
    D,
> = Stage<BottleneckDown<I, M, O, S, E, D>, Bottleneck<O, M, E, D>, R, E, D>;

/// A basic-block ResNet with `1 + R1`, `1 + R2`, `1 + R3`, `1 + R4` blocks per stage.
pub type BasicResNet<
    const R1: usize,
    const R2: usize,
    const R3: usize,
    const R4: usize,
    const N: usize,
    E,
    D,
> = ResNet<
    Stage1Basic<R1, E, D>,
    BasicStage<64, 128, 2, R2, E, D>,
    BasicStage<128, 256, 2, R3, E, D>,
    BasicStage<256, 512, 2, R4, E, D>,
    Linear<512, N, E, D>,
    E,
    D,
>;
/// A bottleneck ResNet with `1 + R1` .. `1 + R4` blocks per stage.
pub type BottleneckResNet<
    const R1: usize,
    const R2: usize,
    const R3: usize,
    const R4: usize,
    const N: usize,
    E,
    D,
> = ResNet<
    BottleneckStage<64, 64, 256, 1, R1, E, D>,
    BottleneckStage<256, 128, 512, 2, R2, E, D>,
    BottleneckStage<512, 256, 1024, 2, R3, E, D>,
    BottleneckStage<1024, 512, 2048, 2, R4, E, D>,
    Linear<2048, N, E, D>,
    E,
    D,
>;
/// A bottleneck ResNet with the stride on each stage's first 3x3 (v1.5).
pub type BottleneckResNetV15<
    const R1: usize,
    const R2: usize,
    const R3: usize,
    const R4: usize,
    const N: usize,
    E,
    D,
> = ResNet<
    Stage<BottleneckDownV15<64, 64, 256, 1, E, D>, Bottleneck<256, 64, E, D>, R1, E, D>,
    Stage<BottleneckDownV15<256, 128, 512, 2, E, D>, Bottleneck<512, 128, E, D>, R2, E, D>,
    Stage<BottleneckDownV15<512, 256, 1024, 2, E, D>, Bottleneck<1024, 256, E, D>, R3, E, D>,
    Stage<BottleneckDownV15<1024, 512, 2048, 2, E, D>, Bottleneck<2048, 512, E, D>, R4, E, D>,
    Linear<2048, N, E, D>,
    E,
    D,
>;
/// A bottleneck ResNet with projection shortcuts everywhere (option C).
pub type BottleneckResNetC<
    const R1: usize,
    const R2: usize,
    const R3: usize,
    const R4: usize,
    const N: usize,
    E,
    D,
> = ResNet<
    Stage<BottleneckDown<64, 64, 256, 1, E, D>, BottleneckDown<256, 64, 256, 1, E, D>, R1, E, D>,
    Stage<BottleneckDown<256, 128, 512, 2, E, D>, BottleneckDown<512, 128, 512, 1, E, D>, R2, E, D>,
    Stage<
        BottleneckDown<512, 256, 1024, 2, E, D>,
        BottleneckDown<1024, 256, 1024, 1, E, D>,
        R3,
        E,
        D,
    >,
    Stage<
        BottleneckDown<1024, 512, 2048, 2, E, D>,
        BottleneckDown<2048, 512, 2048, 1, E, D>,
        R4,
        E,
        D,
    >,
    Linear<2048, N, E, D>,
    E,
    D,
>;
/// A basic-block ResNet with option-A shortcuts (identity, zero-padded channels; no projection parameters).
pub type BasicResNetA<
    const R1: usize,
    const R2: usize,
    const R3: usize,
    const R4: usize,
    const N: usize,
    E,
    D,
> = ResNet<
    Stage1Basic<R1, E, D>,
    Stage<BasicA<64, 128, 2, E, D>, Basic<128, E, D>, R2, E, D>,
    Stage<BasicA<128, 256, 2, E, D>, Basic<256, E, D>, R3, E, D>,
    Stage<BasicA<256, 512, 2, E, D>, Basic<512, E, D>, R4, E, D>,
    Linear<512, N, E, D>,
    E,
    D,
>;
/// A basic-block ResNet with projection shortcuts everywhere (option C).
pub type BasicResNetC<
    const R1: usize,
    const R2: usize,
    const R3: usize,
    const R4: usize,
    const N: usize,
    E,
    D,
> = ResNet<
    Stage<BasicDown<64, 64, 1, E, D>, BasicDown<64, 64, 1, E, D>, R1, E, D>,
    Stage<BasicDown<64, 128, 2, E, D>, BasicDown<128, 128, 1, E, D>, R2, E, D>,
    Stage<BasicDown<128, 256, 2, E, D>, BasicDown<256, 256, 1, E, D>, R3, E, D>,
    Stage<BasicDown<256, 512, 2, E, D>, BasicDown<512, 512, 1, E, D>, R4, E, D>,
    Linear<512, N, E, D>,
    E,
    D,
>;
/// The plain (no shortcut) counterpart of [`BasicResNet`], for the degradation experiment.
pub type PlainNet<
    const R1: usize,
    const R2: usize,
    const R3: usize,
    const R4: usize,
    const N: usize,
    E,
    D,
> = ResNet<
    Stage<PlainBasic<64, 64, 1, E, D>, PlainBasic<64, 64, 1, E, D>, R1, E, D>,
    Stage<PlainBasic<64, 128, 2, E, D>, PlainBasic<128, 128, 1, E, D>, R2, E, D>,
    Stage<PlainBasic<128, 256, 2, E, D>, PlainBasic<256, 256, 1, E, D>, R3, E, D>,
    Stage<PlainBasic<256, 512, 2, E, D>, PlainBasic<512, 512, 1, E, D>, R4, E, D>,
    Linear<512, N, E, D>,
    E,
    D,
>;
/// Plain-18.
pub type Plain18<const N: usize, E, D> = PlainNet<1, 1, 1, 1, N, E, D>;
/// Plain-34 (Table 2 / Figure 4 of the paper).
pub type Plain34<const N: usize, E, D> = PlainNet<2, 3, 5, 2, N, E, D>;
/// ResNet-34 with option-A shortcuts (Table 3, "ResNet-34 A").
pub type ResNet34A<const N: usize, E, D> = BasicResNetA<2, 3, 5, 2, N, E, D>;
/// ResNet-34 with option-C shortcuts (Table 3, "ResNet-34 C").
pub type ResNet34C<const N: usize, E, D> = BasicResNetC<2, 3, 5, 2, N, E, D>;
/// ResNet-50 v1.5 (stride on the 3x3; torchvision's `resnet50`).
pub type ResNet50V15<const N: usize, E, D> = BottleneckResNetV15<2, 3, 5, 2, N, E, D>;
/// ResNet-101 v1.5.
pub type ResNet101V15<const N: usize, E, D> = BottleneckResNetV15<2, 3, 22, 2, N, E, D>;
/// ResNet-152 v1.5.
pub type ResNet152V15<const N: usize, E, D> = BottleneckResNetV15<2, 7, 35, 2, N, E, D>;
/// ResNet-50 with option-C shortcuts.
pub type ResNet50C<const N: usize, E, D> = BottleneckResNetC<2, 3, 5, 2, N, E, D>;
/// ResNet-18 (Table 1: basic blocks 2, 2, 2, 2; the first stage keeps 64
/// channels at stride 1, so all its blocks are identity blocks).
pub type ResNet18<const N: usize, E, D> = BasicResNet<1, 1, 1, 1, N, E, D>;
/// ResNet-34 (basic blocks 3, 4, 6, 3).
pub type ResNet34<const N: usize, E, D> = BasicResNet<2, 3, 5, 2, N, E, D>;
/// ResNet-50 (bottlenecks 3, 4, 6, 3).
pub type ResNet50<const N: usize, E, D> = BottleneckResNet<2, 3, 5, 2, N, E, D>;
/// ResNet-101 (bottlenecks 3, 4, 23, 3).
pub type ResNet101<const N: usize, E, D> = BottleneckResNet<2, 3, 22, 2, N, E, D>;
/// ResNet-152 (bottlenecks 3, 8, 36, 3).
pub type ResNet152<const N: usize, E, D> = BottleneckResNet<2, 7, 35, 2, N, E, D>;

/// Stage 1 of the basic-block ResNets: `1 + R` identity blocks at 64 channels.
pub type Stage1Basic<const R: usize, E, D> = Stage<Basic<64, E, D>, Basic<64, E, D>, R, E, D>;

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::optim::{Momentum, Sgd, SgdConfig, WeightDecay};

    #[test]
    fn parameter_counts_equal_torchvisions() {
        let dev: Cpu = Default::default();
        let m: ResNet18<1000, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), 11_689_512);
        let m: ResNet34<1000, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), 21_797_672);
        let m: ResNet50<1000, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), 25_557_032);
        let m: ResNet101<1000, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), 44_549_160);
        let m: ResNet152<1000, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), 60_192_808);
    }

    #[test]
    fn variants_have_the_expected_parameter_counts() {
        let dev: Cpu = Default::default();
        // v1.5 moves the stride, not the weights.
        let m: ResNet50V15<1000, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), 25_557_032);
        // Option A drops the three projections of ResNet-34 (conv + BN).
        let proj = |i: usize, o: usize| i * o + 2 * o;
        let b = 21_797_672;
        let m: ResNet34A<1000, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(
            m.num_trainable_params(),
            b - proj(64, 128) - proj(128, 256) - proj(256, 512)
        );
        // Option C adds a projection to every other block (3+4+6+3 = 16 blocks, 3 had one).
        let extra = 3 * proj(64, 64) + 3 * proj(128, 128) + 5 * proj(256, 256) + 2 * proj(512, 512);
        let m: ResNet34C<1000, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), b + extra);
        // Plain-34 is ResNet-34 without the projections.
        let m: Plain34<1000, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(
            m.num_trainable_params(),
            b - proj(64, 128) - proj(128, 256) - proj(256, 512)
        );
    }

    #[test]
    fn a_few_sgd_steps_reduce_the_loss_on_a_fixed_batch() {
        let dev: Cpu = Cpu::seed_from_u64(0);
        let mut model: ResNet18<4, f32, Cpu> = BuildModule::build(&dev);
        let x: Tensor<(Const<4>, usize, usize, Const<3>), f32, Cpu> =
            dev.sample_normal_like(&(Const::<4>, 32usize, 32usize, Const::<3>));
        let y: Tensor<Rank2<4, 4>, f32, Cpu> = dev.tensor([
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let mut opt = Sgd::new(
            &model,
            SgdConfig {
                lr: 0.05,
                momentum: Some(Momentum::Classic(0.9)),
                weight_decay: Some(WeightDecay::L2(1e-4)),
            },
        );
        let mut grads = model.alloc_grads();
        let mut losses = Vec::new();
        for _ in 0..6 {
            let logits = model.forward(x.clone().traced(grads));
            assert_eq!(logits.shape(), &(Const::<4>, Const::<4>));
            let loss = cross_entropy_with_logits_loss(logits, y.clone());
            losses.push(loss.array());
            grads = loss.backward();
            opt.update(&mut model, &grads).unwrap();
            model.zero_grads(&mut grads);
        }
        assert!(losses[5] < losses[0] * 0.7, "{losses:?}");
        // Evaluation (untraced) uses the running statistics and gives finite logits of the right shape.
        let eval = model.forward(x.clone());
        assert!(eval.as_vec().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn any_input_size_flows_through() {
        let dev: Cpu = Default::default();
        let mut model: ResNet50<7, f32, Cpu> = BuildModule::build(&dev);
        for (h, w) in [(32, 32), (67, 45)] {
            let x = dev.sample_normal_like(&(1usize, h, w, Const::<3>));
            let y = model.forward(x);
            assert_eq!(y.shape().1, Const::<7>);
        }
    }
}

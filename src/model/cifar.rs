//! The paper's CIFAR-10 networks (§4.2): a 3x3 conv with 16 filters, three
//! stages of `n` basic blocks on 32x32, 16x16 and 8x8 maps with 16, 32 and 64
//! filters, global average pooling and a fully connected layer; `6n + 2`
//! weighted layers (ResNet-20/32/44/56/110 for n = 3/5/7/9/18). Shortcuts are
//! identities throughout; where dimensions increase they subsample with
//! stride 2 and pad the new channels with zeros (option A, no parameters).

use super::blocks::{Basic, BasicA, BnTape, ConvBn, Layer, PlainBasic, Stage, conv_bn_fields};
use super::pool::global_avg_pool;
use super::shape::{Act, Halvable};
use super::summary::{Describe, Row, join};
use dfdx::nn::modules::Linear;
use dfdx::prelude::*;

/// A network of the paper's CIFAR family: 3x3 stem with 16 filters, three
/// stages (`L1`: 16, `L2`: 32, `L3`: 64 filters), global average pooling,
/// `N` classes. See [`CifarResNet`] and [`CifarPlain`].
#[derive(Debug, Clone)]
pub struct CifarNet<L1, L2, L3, const N: usize, E: Dtype, D: Device<E>> {
    /// 3x3 conv, 16 filters, + BN.
    pub stem: ConvBn<3, 16, 3, 1, 1, E, D>,
    /// 32x32 maps, 16 filters.
    pub layer1: L1,
    /// 16x16 maps, 32 filters.
    pub layer2: L2,
    /// 8x8 maps, 64 filters.
    pub layer3: L3,
    /// Classifier.
    pub fc: Linear<64, N, E, D>,
}

impl<L1, L2, L3, const N: usize, E, D> TensorCollection<E, D> for CifarNet<L1, L2, L3, N, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
    D: Device<E>,
    rand_distr::StandardNormal: rand_distr::Distribution<E>,
    L1: TensorCollection<E, D>,
    L2: TensorCollection<E, D>,
    L3: TensorCollection<E, D>,
{
    type To<E2: Dtype, D2: Device<E2>> =
        CifarNet<L1::To<E2, D2>, L2::To<E2, D2>, L3::To<E2, D2>, N, E2, D2>;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                conv_bn_fields!(Self, stem, "conv1", "bn1"),
                Self::module("layer1", |s| &s.layer1, |s| &mut s.layer1),
                Self::module("layer2", |s| &s.layer2, |s| &mut s.layer2),
                Self::module("layer3", |s| &s.layer3, |s| &mut s.layer3),
                Self::module("fc", |s| &s.fc, |s| &mut s.fc),
            ),
            |(stem, layer1, layer2, layer3, fc)| CifarNet {
                stem: ConvBn {
                    conv: stem.0,
                    bn: stem.1,
                },
                layer1,
                layer2,
                layer3,
                fc,
            },
        )
    }
}

impl<L1, L2, L3, const N: usize, E: Dtype, D: Device<E>> CifarNet<L1, L2, L3, N, E, D>
where
    L1: Layer<E, D, In = Const<16>, Out = Const<16>>,
    L2: Layer<E, D, In = Const<16>, Out = Const<32>>,
    L3: Layer<E, D, In = Const<32>, Out = Const<64>>,
{
    /// Logits for NHWC images `(B, H, W, 3)` (32x32 in the paper); traced trains, untraced evaluates.
    pub fn forward<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, 3, E, D, T>,
    ) -> Tensor<(B, Const<N>), E, D, T>
    where
        Linear<64, N, E, D>:
            Module<Tensor<(B, Const<64>), E, D, T>, Output = Tensor<(B, Const<N>), E, D, T>>,
    {
        let x = self.stem.fwd(x).relu();
        let x = self.layer3.fwd(self.layer2.fwd(self.layer1.fwd(x)));
        self.fc.forward(global_avg_pool(x))
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
        self.fc.describe(&join(prefix, "fc"), hw, rows);
        hw
    }
}

/// A CIFAR ResNet with `n` blocks per stage (`R = n - 1` after each stage's
/// first), option-A shortcuts, and `N` classes.
pub type CifarResNet<const R: usize, const N: usize, E, D> = CifarNet<
    Stage<Basic<16, E, D>, Basic<16, E, D>, R, E, D>,
    Stage<BasicA<16, 32, 2, E, D>, Basic<32, E, D>, R, E, D>,
    Stage<BasicA<32, 64, 2, E, D>, Basic<64, E, D>, R, E, D>,
    N,
    E,
    D,
>;

/// The plain counterpart of [`CifarResNet`] (same layers, no shortcuts).
pub type CifarPlain<const R: usize, const N: usize, E, D> = CifarNet<
    Stage<PlainBasic<16, 16, 1, E, D>, PlainBasic<16, 16, 1, E, D>, R, E, D>,
    Stage<PlainBasic<16, 32, 2, E, D>, PlainBasic<32, 32, 1, E, D>, R, E, D>,
    Stage<PlainBasic<32, 64, 2, E, D>, PlainBasic<64, 64, 1, E, D>, R, E, D>,
    N,
    E,
    D,
>;

/// Plain-20.
pub type Plain20<const N: usize, E, D> = CifarPlain<2, N, E, D>;
/// Plain-32.
pub type Plain32<const N: usize, E, D> = CifarPlain<4, N, E, D>;
/// Plain-44.
pub type Plain44<const N: usize, E, D> = CifarPlain<6, N, E, D>;
/// Plain-56.
pub type Plain56<const N: usize, E, D> = CifarPlain<8, N, E, D>;
/// Plain-110.
pub type Plain110<const N: usize, E, D> = CifarPlain<17, N, E, D>;

/// ResNet-20 (n = 3).
pub type ResNet20<const N: usize, E, D> = CifarResNet<2, N, E, D>;
/// ResNet-32 (n = 5).
pub type ResNet32<const N: usize, E, D> = CifarResNet<4, N, E, D>;
/// ResNet-44 (n = 7).
pub type ResNet44<const N: usize, E, D> = CifarResNet<6, N, E, D>;
/// ResNet-56 (n = 9).
pub type ResNet56<const N: usize, E, D> = CifarResNet<8, N, E, D>;
/// ResNet-110 (n = 18).
pub type ResNet110<const N: usize, E, D> = CifarResNet<17, N, E, D>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters of the paper's CIFAR ResNet with n blocks per stage, option A, 10 classes.
    fn expected(n: usize) -> usize {
        let conv = |i: usize, o: usize| i * o * 9;
        let bn = |c: usize| 2 * c;
        let mut p = conv(3, 16) + bn(16);
        for (i, o) in [(16, 16), (16, 32), (32, 64)] {
            p += conv(i, o) + bn(o) + conv(o, o) + bn(o); // first block
            p += (n - 1) * (2 * conv(o, o) + 2 * bn(o));
        }
        p + 64 * 10 + 10
    }

    #[test]
    fn parameter_counts() {
        let dev: Cpu = Default::default();
        assert_eq!(expected(3), 269_722); // the paper's "0.27M"
        let m: ResNet20<10, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), expected(3));
        let m: ResNet32<10, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), expected(5));
        let m: ResNet44<10, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), expected(7));
        let m: ResNet56<10, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), expected(9));
        let m: ResNet110<10, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(m.num_trainable_params(), expected(18)); // "1.7M"
    }
}

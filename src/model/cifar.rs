//! The paper's CIFAR-10 networks (§4.2): a 3x3 conv with 16 filters, three
//! stages of `n` basic blocks on 32x32, 16x16 and 8x8 maps with 16, 32 and 64
//! filters, global average pooling and a fully connected layer; `6n + 2`
//! weighted layers (ResNet-20/32/44/56/110 for n = 3/5/7/9/18). Shortcuts are
//! identities throughout; where dimensions increase they subsample with
//! stride 2 and pad the new channels with zeros (option A, no parameters).

use super::conv::{Out, im2col_index};
use super::pool::global_avg_pool;
use super::resnet::{Act, Basic, BnTape, ConvBn, Layer, PlainBasic, Stage, collection};
use super::shape::{Halvable, Spatial, Stride, out_side};
use dfdx::nn::modules::Linear;
use dfdx::prelude::*;

/// Basic block with an option-A shortcut: `I -> O` channels, stride `S`.
#[derive(Debug, Clone)]
pub struct BasicA<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>> {
    /// 3x3 strided conv + BN.
    pub a: ConvBn<I, O, 3, S, 1, E, D>,
    /// 3x3 conv + BN.
    pub b: ConvBn<O, O, 3, 1, 1, E, D>,
}

collection!(BasicA<I, O, S> { a, b }, const I: usize, const O: usize, const S: usize, E, D);

/// Option A: `x[:, ::S, ::S, :]` followed by zero channels up to `O`.
pub fn shortcut_a<
    const I: usize,
    const O: usize,
    const S: usize,
    B: Dim,
    H: Halvable,
    W: Halvable,
    E: Dtype,
    D: Device<E>,
    T: Tape<E, D>,
>(
    x: Act<B, H, W, I, E, D, T>,
) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T>
where
    Stride<S>: Spatial,
{
    assert!(O >= I);
    let (b, hd, wd, _) = *x.shape();
    let (h, w) = (hd.size(), wd.size());
    let dev = x.device().clone();
    let (idx, _, oh, ow) = im2col_index(b.size(), h, w, 1, S, 0);
    let m = idx.len();
    let rows = x.reshape_like(&(b.size() * h * w, Const::<I>));
    let sub: Tensor<(usize, Const<I>), E, D, T> = rows.gather(dev.tensor_from_vec(idx, (m,)));
    // [I, O] = [identity | zeros]: a constant, so no parameter and no gradient of its own.
    let mut pad = vec![E::default(); I * O];
    for c in 0..I {
        pad[c * O + c] = E::ONE;
    }
    let pad = dev.tensor_from_vec(pad, (Const::<I>, Const::<O>));
    let shape = (
        b,
        out_side::<Stride<S>, H>(oh),
        out_side::<Stride<S>, W>(ow),
        Const,
    );
    sub.matmul(pad).reshape_like(&shape)
}

impl<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>>
    Layer<I, O, Stride<S>, E, D> for BasicA<I, O, S, E, D>
where
    Stride<S>: Spatial,
{
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T> {
        let y = self.b.fwd(self.a.fwd(x.with_empty_tape()).relu());
        (y + shortcut_a::<I, O, S, B, H, W, E, D, T>(x)).relu()
    }
}

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
                Self::module("stem", |s| &s.stem, |s| &mut s.stem),
                Self::module("layer1", |s| &s.layer1, |s| &mut s.layer1),
                Self::module("layer2", |s| &s.layer2, |s| &mut s.layer2),
                Self::module("layer3", |s| &s.layer3, |s| &mut s.layer3),
                Self::module("fc", |s| &s.fc, |s| &mut s.fc),
            ),
            |(stem, layer1, layer2, layer3, fc)| CifarNet {
                stem,
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
    L1: Layer<16, 16, Stride<1>, E, D>,
    L2: Layer<16, 32, Stride<2>, E, D>,
    L3: Layer<32, 64, Stride<2>, E, D>,
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

/// A CIFAR ResNet with `n` blocks per stage (`R = n - 1` after each stage's
/// first), option-A shortcuts, and `N` classes.
pub type CifarResNet<const R: usize, const N: usize, E, D> = CifarNet<
    Stage<16, 16, Basic<16, E, D>, Basic<16, E, D>, R, E, D>,
    Stage<16, 32, BasicA<16, 32, 2, E, D>, Basic<32, E, D>, R, E, D>,
    Stage<32, 64, BasicA<32, 64, 2, E, D>, Basic<64, E, D>, R, E, D>,
    N,
    E,
    D,
>;

/// The plain counterpart of [`CifarResNet`] (same layers, no shortcuts).
pub type CifarPlain<const R: usize, const N: usize, E, D> = CifarNet<
    Stage<16, 16, PlainBasic<16, 16, 1, E, D>, PlainBasic<16, 16, 1, E, D>, R, E, D>,
    Stage<16, 32, PlainBasic<16, 32, 2, E, D>, PlainBasic<32, 32, 1, E, D>, R, E, D>,
    Stage<32, 64, PlainBasic<32, 64, 2, E, D>, PlainBasic<64, 64, 1, E, D>, R, E, D>,
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

    #[test]
    fn option_a_subsamples_and_zero_pads() {
        let dev: Cpu = Default::default();
        let x = dev.tensor_from_vec(
            (0..2 * 4 * 4 * 2).map(|v| v as f32).collect(),
            (2usize, 4usize, 4usize, Const::<2>),
        );
        let y = shortcut_a::<2, 4, 2, usize, usize, usize, f32, Cpu, NoneTape>(x.clone());
        assert_eq!(y.shape(), &(2, 2, 2, Const::<4>));
        let (xv, yv) = (x.as_vec(), y.as_vec());
        for n in 0..2 {
            for oy in 0..2 {
                for ox in 0..2 {
                    for c in 0..4 {
                        let got = yv[((n * 2 + oy) * 2 + ox) * 4 + c];
                        let want = if c < 2 {
                            xv[((n * 4 + oy * 2) * 4 + ox * 2) * 2 + c]
                        } else {
                            0.0
                        };
                        assert_eq!(got, want);
                    }
                }
            }
        }
    }
}

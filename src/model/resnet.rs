//! Residual blocks and the ImageNet ResNets of the paper's Table 1.
//!
//! Channels and strides are const generics, spatial sizes `usize` or `Const`
//! (mapped by each layer's stride, see [`super::shape`]): a channel or size
//! mismatch between layers is a compile error. Blocks come in two kinds, as
//! in the paper with shortcut option B: identity blocks (`Basic`,
//! `Bottleneck`) and the first block of a stage, which projects the
//! shortcut with a strided 1x1 convolution (`BasicDown`, `BottleneckDown`).
//! Bottlenecks put the stride on the first 1x1 convolution (the paper's v1).
//!
//! BatchNorm is dfdx's `BatchNorm1D` on the `(B*H*W, C)` view, which has
//! BatchNorm2d's semantics. Training (batch statistics, running averages
//! updated) or evaluation (running statistics) follows the tape: a traced
//! input (`OwnedTape`) trains, an untraced one (`NoneTape`) evaluates.

use super::cifar::BasicA;
use super::conv::{Conv2d, Out};
use super::pool::{global_avg_pool, max_pool};
use super::shape::{Halvable, Spatial, Stride};
use dfdx::nn::modules::{BatchNorm1D, Linear, Repeated};
use dfdx::prelude::*;
use std::marker::PhantomData;

/// The two tapes, each with its BatchNorm behaviour.
pub trait BnTape<E: Dtype, D: Device<E>>: Tape<E, D> + Sized {
    /// Normalises `(N, C)` rows with `bn`.
    fn batch_norm<const C: usize>(
        bn: &mut BatchNorm1D<C, E, D>,
        x: Tensor<(usize, Const<C>), E, D, Self>,
    ) -> Tensor<(usize, Const<C>), E, D, Self>;
}

impl<E: Dtype, D: Device<E>> BnTape<E, D> for NoneTape {
    fn batch_norm<const C: usize>(
        bn: &mut BatchNorm1D<C, E, D>,
        x: Tensor<(usize, Const<C>), E, D, Self>,
    ) -> Tensor<(usize, Const<C>), E, D, Self> {
        bn.forward(x)
    }
}

impl<E: Dtype, D: Device<E>> BnTape<E, D> for OwnedTape<E, D> {
    fn batch_norm<const C: usize>(
        bn: &mut BatchNorm1D<C, E, D>,
        x: Tensor<(usize, Const<C>), E, D, Self>,
    ) -> Tensor<(usize, Const<C>), E, D, Self> {
        if super::conv::cpu::is_cpu_f32::<E, D>() {
            super::batchnorm::train_forward(bn, x) // fused and multi-threaded
        } else {
            bn.forward_mut(x)
        }
    }
}

pub use super::shape::Act;

/// A layer from `I` to `O` channels whose spatial sides map by `M`
/// ([`Stride<1>`] keeps them, [`Stride<2>`] halves them).
pub trait Layer<const I: usize, const O: usize, M: Spatial, E: Dtype, D: Device<E>> {
    /// Forward; trains or evaluates according to the tape (see the module docs).
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, M::Out<H>, M::Out<W>, O, E, D, T>;
}

fn bn_nhwc<B: Dim, H: Dim, W: Dim, const C: usize, E: Dtype, D: Device<E>, T: BnTape<E, D>>(
    bn: &mut BatchNorm1D<C, E, D>,
    x: Act<B, H, W, C, E, D, T>,
) -> Act<B, H, W, C, E, D, T> {
    let (b, h, w, c) = *x.shape();
    let rows = x.reshape_like(&(b.size() * h.size() * w.size(), c));
    T::batch_norm(bn, rows).reshape_like(&(b, h, w, c))
}

/// Convolution followed by BatchNorm.
#[derive(Debug, Clone)]
pub struct ConvBn<
    const I: usize,
    const O: usize,
    const K: usize,
    const S: usize,
    const P: usize,
    E: Dtype,
    D: Device<E>,
> {
    /// The convolution.
    pub conv: Conv2d<I, O, K, S, P, E, D>,
    /// Its BatchNorm.
    pub bn: BatchNorm1D<O, E, D>,
}

impl<
    const I: usize,
    const O: usize,
    const K: usize,
    const S: usize,
    const P: usize,
    E: Dtype,
    D: Device<E>,
> Layer<I, O, Stride<S>, E, D> for ConvBn<I, O, K, S, P, E, D>
where
    Stride<S>: Spatial,
{
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T> {
        bn_nhwc(&mut self.bn, self.conv.forward(x))
    }
}

macro_rules! collection {
    // A struct of named module fields, visited in order.
    ($ty:ident < $($p:ident),* > { $($field:ident),+ }, $($bounds:tt)*) => {
        impl<$($bounds)*> TensorCollection<E, D> for $ty<$($p,)* E, D>
        where
            E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
            D: Device<E>,
            rand_distr::StandardNormal: rand_distr::Distribution<E>,
        {
            type To<E2: Dtype, D2: Device<E2>> = $ty<$($p,)* E2, D2>;
            fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
                visitor: &mut V,
            ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
                visitor.visit_fields(
                    ($(Self::module(stringify!($field), |s| &s.$field, |s| &mut s.$field),)+),
                    |($($field,)+)| $ty { $($field,)+ },
                )
            }
        }
    };
}
pub(crate) use collection;

collection!(ConvBn<I, O, K, S, P> { conv, bn }, const I: usize, const O: usize, const K: usize, const S: usize, const P: usize, E, D);

/// Basic block, identity shortcut: `C -> C`, stride 1.
#[derive(Debug, Clone)]
pub struct Basic<const C: usize, E: Dtype, D: Device<E>> {
    /// 3x3 conv + BN.
    pub a: ConvBn<C, C, 3, 1, 1, E, D>,
    /// 3x3 conv + BN.
    pub b: ConvBn<C, C, 3, 1, 1, E, D>,
}
collection!(Basic<C> { a, b }, const C: usize, E, D);

impl<const C: usize, E: Dtype, D: Device<E>> Layer<C, C, Stride<1>, E, D> for Basic<C, E, D> {
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, C, E, D, T>,
    ) -> Act<B, H, W, C, E, D, T> {
        let y = self.b.fwd(self.a.fwd(x.with_empty_tape()).relu());
        (y + x).relu()
    }
}

/// Basic block whose shortcut is projected (option B): `I -> O`, stride `S`.
#[derive(Debug, Clone)]
pub struct BasicDown<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>> {
    /// 3x3 strided conv + BN.
    pub a: ConvBn<I, O, 3, S, 1, E, D>,
    /// 3x3 conv + BN.
    pub b: ConvBn<O, O, 3, 1, 1, E, D>,
    /// 1x1 strided projection + BN.
    pub down: ConvBn<I, O, 1, S, 0, E, D>,
}
collection!(BasicDown<I, O, S> { a, b, down }, const I: usize, const O: usize, const S: usize, E, D);

impl<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>>
    Layer<I, O, Stride<S>, E, D> for BasicDown<I, O, S, E, D>
where
    Stride<S>: Spatial,
{
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T> {
        let y = self.b.fwd(self.a.fwd(x.with_empty_tape()).relu());
        (y + self.down.fwd(x)).relu()
    }
}

/// Bottleneck block, identity shortcut: `C -> M -> M -> C` (C = 4M), stride 1.
#[derive(Debug, Clone)]
pub struct Bottleneck<const C: usize, const M: usize, E: Dtype, D: Device<E>> {
    /// 1x1 reduce + BN.
    pub a: ConvBn<C, M, 1, 1, 0, E, D>,
    /// 3x3 + BN.
    pub b: ConvBn<M, M, 3, 1, 1, E, D>,
    /// 1x1 expand + BN.
    pub c: ConvBn<M, C, 1, 1, 0, E, D>,
}
collection!(Bottleneck<C, M> { a, b, c }, const C: usize, const M: usize, E, D);

impl<const C: usize, const M: usize, E: Dtype, D: Device<E>> Layer<C, C, Stride<1>, E, D>
    for Bottleneck<C, M, E, D>
{
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, C, E, D, T>,
    ) -> Act<B, H, W, C, E, D, T> {
        let y = self
            .c
            .fwd(self.b.fwd(self.a.fwd(x.with_empty_tape()).relu()).relu());
        (y + x).relu()
    }
}

/// Bottleneck block with a projected shortcut: `I -> M -> M -> O`, stride `S`
/// on the first 1x1 (the paper's v1).
#[derive(Debug, Clone)]
pub struct BottleneckDown<
    const I: usize,
    const M: usize,
    const O: usize,
    const S: usize,
    E: Dtype,
    D: Device<E>,
> {
    /// 1x1 strided reduce + BN.
    pub a: ConvBn<I, M, 1, S, 0, E, D>,
    /// 3x3 + BN.
    pub b: ConvBn<M, M, 3, 1, 1, E, D>,
    /// 1x1 expand + BN.
    pub c: ConvBn<M, O, 1, 1, 0, E, D>,
    /// 1x1 strided projection + BN.
    pub down: ConvBn<I, O, 1, S, 0, E, D>,
}
collection!(BottleneckDown<I, M, O, S> { a, b, c, down }, const I: usize, const M: usize, const O: usize, const S: usize, E, D);

impl<const I: usize, const M: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>>
    Layer<I, O, Stride<S>, E, D> for BottleneckDown<I, M, O, S, E, D>
where
    Stride<S>: Spatial,
{
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T> {
        let y = self
            .c
            .fwd(self.b.fwd(self.a.fwd(x.with_empty_tape()).relu()).relu());
        (y + self.down.fwd(x)).relu()
    }
}

/// Bottleneck with a projected shortcut and the stride on the 3x3
/// (torchvision's "v1.5"): `I -> M -> M -> O`.
#[derive(Debug, Clone)]
pub struct BottleneckDownV15<
    const I: usize,
    const M: usize,
    const O: usize,
    const S: usize,
    E: Dtype,
    D: Device<E>,
> {
    /// 1x1 reduce + BN.
    pub a: ConvBn<I, M, 1, 1, 0, E, D>,
    /// 3x3 strided + BN.
    pub b: ConvBn<M, M, 3, S, 1, E, D>,
    /// 1x1 expand + BN.
    pub c: ConvBn<M, O, 1, 1, 0, E, D>,
    /// 1x1 strided projection + BN.
    pub down: ConvBn<I, O, 1, S, 0, E, D>,
}
collection!(BottleneckDownV15<I, M, O, S> { a, b, c, down }, const I: usize, const M: usize, const O: usize, const S: usize, E, D);

impl<const I: usize, const M: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>>
    Layer<I, O, Stride<S>, E, D> for BottleneckDownV15<I, M, O, S, E, D>
where
    Stride<S>: Spatial,
{
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T> {
        let y = self
            .c
            .fwd(self.b.fwd(self.a.fwd(x.with_empty_tape()).relu()).relu());
        (y + self.down.fwd(x)).relu()
    }
}

/// The "plain" counterpart of a basic block (no shortcut): `I -> O`, stride `S`.
#[derive(Debug, Clone)]
pub struct PlainBasic<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>> {
    /// 3x3 strided conv + BN.
    pub a: ConvBn<I, O, 3, S, 1, E, D>,
    /// 3x3 conv + BN.
    pub b: ConvBn<O, O, 3, 1, 1, E, D>,
}
collection!(PlainBasic<I, O, S> { a, b }, const I: usize, const O: usize, const S: usize, E, D);

impl<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>>
    Layer<I, O, Stride<S>, E, D> for PlainBasic<I, O, S, E, D>
where
    Stride<S>: Spatial,
{
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T> {
        self.b.fwd(self.a.fwd(x).relu()).relu()
    }
}

/// One stage: a projecting block, then `R` identity blocks.
#[derive(Debug, Clone)]
pub struct Stage<
    const I: usize,
    const O: usize,
    First,
    Rest,
    const R: usize,
    E: Dtype,
    D: Device<E>,
> {
    /// The first (projecting) block.
    pub first: First,
    /// The identity blocks.
    pub rest: Repeated<Rest, R>,
    _m: PhantomData<(E, D)>,
}

impl<const I: usize, const O: usize, First, Rest, const R: usize, E, D> TensorCollection<E, D>
    for Stage<I, O, First, Rest, R, E, D>
where
    E: Dtype,
    D: Device<E>,
    First: TensorCollection<E, D>,
    Rest: TensorCollection<E, D>,
{
    type To<E2: Dtype, D2: Device<E2>> =
        Stage<I, O, First::To<E2, D2>, Rest::To<E2, D2>, R, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("first", |s| &s.first, |s| &mut s.first),
                Self::module("rest", |s| &s.rest, |s| &mut s.rest),
            ),
            |(first, rest)| Stage {
                first,
                rest,
                _m: PhantomData,
            },
        )
    }
}

impl<const I: usize, const O: usize, First, Rest, const R: usize, M, E, D> Layer<I, O, M, E, D>
    for Stage<I, O, First, Rest, R, E, D>
where
    E: Dtype,
    D: Device<E>,
    M: Spatial,
    First: Layer<I, O, M, E, D>,
    Rest: Layer<O, O, Stride<1>, E, D>,
{
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, M::Out<H>, M::Out<W>, O, E, D, T> {
        let mut y = self.first.fwd(x);
        for block in &mut self.rest.modules {
            y = block.fwd(y);
        }
        y
    }
}

/// An ImageNet ResNet: 7x7/2 stem, 3x3/2 max pool, four stages (`C1..C4`
/// output channels), global average pool, fully connected layer to `N` classes.
#[derive(Debug, Clone)]
pub struct ResNet<
    L1,
    L2,
    L3,
    L4,
    const C1: usize,
    const C2: usize,
    const C3: usize,
    const C4: usize,
    const N: usize,
    E: Dtype,
    D: Device<E>,
> {
    /// Stem: 7x7/2 conv, 64 channels, + BN.
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
    pub fc: Linear<C4, N, E, D>,
}

impl<
    L1,
    L2,
    L3,
    L4,
    const C1: usize,
    const C2: usize,
    const C3: usize,
    const C4: usize,
    const N: usize,
    E,
    D,
> TensorCollection<E, D> for ResNet<L1, L2, L3, L4, C1, C2, C3, C4, N, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
    D: Device<E>,
    rand_distr::StandardNormal: rand_distr::Distribution<E>,
    L1: TensorCollection<E, D>,
    L2: TensorCollection<E, D>,
    L3: TensorCollection<E, D>,
    L4: TensorCollection<E, D>,
{
    type To<E2: Dtype, D2: Device<E2>> = ResNet<
        L1::To<E2, D2>,
        L2::To<E2, D2>,
        L3::To<E2, D2>,
        L4::To<E2, D2>,
        C1,
        C2,
        C3,
        C4,
        N,
        E2,
        D2,
    >;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("stem", |s| &s.stem, |s| &mut s.stem),
                Self::module("layer1", |s| &s.layer1, |s| &mut s.layer1),
                Self::module("layer2", |s| &s.layer2, |s| &mut s.layer2),
                Self::module("layer3", |s| &s.layer3, |s| &mut s.layer3),
                Self::module("layer4", |s| &s.layer4, |s| &mut s.layer4),
                Self::module("fc", |s| &s.fc, |s| &mut s.fc),
            ),
            |(stem, layer1, layer2, layer3, layer4, fc)| ResNet {
                stem,
                layer1,
                layer2,
                layer3,
                layer4,
                fc,
            },
        )
    }
}

impl<
    L1,
    L2,
    L3,
    L4,
    const C1: usize,
    const C2: usize,
    const C3: usize,
    const C4: usize,
    const N: usize,
    E,
    D,
> ResNet<L1, L2, L3, L4, C1, C2, C3, C4, N, E, D>
where
    E: Dtype,
    D: Device<E>,
    L1: Layer<64, C1, Stride<1>, E, D>,
    L2: Layer<C1, C2, Stride<2>, E, D>,
    L3: Layer<C2, C3, Stride<2>, E, D>,
    L4: Layer<C3, C4, Stride<2>, E, D>,
{
    /// Logits for a batch of NHWC images `(B, H, W, 3)`. A traced input
    /// trains (BatchNorm uses and updates batch statistics); an untraced one
    /// evaluates. Any input size works (global average pooling).
    pub fn forward<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, 3, E, D, T>,
    ) -> Tensor<(B, Const<N>), E, D, T>
    where
        Linear<C4, N, E, D>:
            Module<Tensor<(B, Const<C4>), E, D, T>, Output = Tensor<(B, Const<N>), E, D, T>>,
    {
        let x = self.stem.fwd(x).relu();
        let x = max_pool::<3, 2, 1, B, _, _, 64, E, D, T>(x);
        let x = self
            .layer4
            .fwd(self.layer3.fwd(self.layer2.fwd(self.layer1.fwd(x))));
        self.fc.forward(global_avg_pool(x))
    }
}

/// The stage types of Table 1.
pub type BasicStage<const I: usize, const O: usize, const S: usize, const R: usize, E, D> =
    Stage<I, O, BasicDown<I, O, S, E, D>, Basic<O, E, D>, R, E, D>;
/// A bottleneck stage: `I -> O` channels with bottleneck width `M`.
pub type BottleneckStage<
    const I: usize,
    const M: usize,
    const O: usize,
    const S: usize,
    const R: usize,
    E,
    D,
> = Stage<I, O, BottleneckDown<I, M, O, S, E, D>, Bottleneck<O, M, E, D>, R, E, D>;

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
    64,
    128,
    256,
    512,
    N,
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
    256,
    512,
    1024,
    2048,
    N,
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
    Stage<64, 256, BottleneckDownV15<64, 64, 256, 1, E, D>, Bottleneck<256, 64, E, D>, R1, E, D>,
    Stage<
        256,
        512,
        BottleneckDownV15<256, 128, 512, 2, E, D>,
        Bottleneck<512, 128, E, D>,
        R2,
        E,
        D,
    >,
    Stage<
        512,
        1024,
        BottleneckDownV15<512, 256, 1024, 2, E, D>,
        Bottleneck<1024, 256, E, D>,
        R3,
        E,
        D,
    >,
    Stage<
        1024,
        2048,
        BottleneckDownV15<1024, 512, 2048, 2, E, D>,
        Bottleneck<2048, 512, E, D>,
        R4,
        E,
        D,
    >,
    256,
    512,
    1024,
    2048,
    N,
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
    Stage<
        64,
        256,
        BottleneckDown<64, 64, 256, 1, E, D>,
        BottleneckDown<256, 64, 256, 1, E, D>,
        R1,
        E,
        D,
    >,
    Stage<
        256,
        512,
        BottleneckDown<256, 128, 512, 2, E, D>,
        BottleneckDown<512, 128, 512, 1, E, D>,
        R2,
        E,
        D,
    >,
    Stage<
        512,
        1024,
        BottleneckDown<512, 256, 1024, 2, E, D>,
        BottleneckDown<1024, 256, 1024, 1, E, D>,
        R3,
        E,
        D,
    >,
    Stage<
        1024,
        2048,
        BottleneckDown<1024, 512, 2048, 2, E, D>,
        BottleneckDown<2048, 512, 2048, 1, E, D>,
        R4,
        E,
        D,
    >,
    256,
    512,
    1024,
    2048,
    N,
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
    Stage<64, 128, BasicA<64, 128, 2, E, D>, Basic<128, E, D>, R2, E, D>,
    Stage<128, 256, BasicA<128, 256, 2, E, D>, Basic<256, E, D>, R3, E, D>,
    Stage<256, 512, BasicA<256, 512, 2, E, D>, Basic<512, E, D>, R4, E, D>,
    64,
    128,
    256,
    512,
    N,
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
    Stage<64, 64, BasicDown<64, 64, 1, E, D>, BasicDown<64, 64, 1, E, D>, R1, E, D>,
    Stage<64, 128, BasicDown<64, 128, 2, E, D>, BasicDown<128, 128, 1, E, D>, R2, E, D>,
    Stage<128, 256, BasicDown<128, 256, 2, E, D>, BasicDown<256, 256, 1, E, D>, R3, E, D>,
    Stage<256, 512, BasicDown<256, 512, 2, E, D>, BasicDown<512, 512, 1, E, D>, R4, E, D>,
    64,
    128,
    256,
    512,
    N,
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
    Stage<64, 64, PlainBasic<64, 64, 1, E, D>, PlainBasic<64, 64, 1, E, D>, R1, E, D>,
    Stage<64, 128, PlainBasic<64, 128, 2, E, D>, PlainBasic<128, 128, 1, E, D>, R2, E, D>,
    Stage<128, 256, PlainBasic<128, 256, 2, E, D>, PlainBasic<256, 256, 1, E, D>, R3, E, D>,
    Stage<256, 512, PlainBasic<256, 512, 2, E, D>, PlainBasic<512, 512, 1, E, D>, R4, E, D>,
    64,
    128,
    256,
    512,
    N,
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
pub type Stage1Basic<const R: usize, E, D> =
    Stage<64, 64, Basic<64, E, D>, Basic<64, E, D>, R, E, D>;

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

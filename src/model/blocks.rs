//! The building blocks of every network in the crate: convolution + BatchNorm
//! ([`ConvBn`]), the residual blocks (option A, B and C shortcuts, basic and
//! bottleneck, v1 and v1.5), their plain counterpart, and a [`Stage`].
//!
//! Each block is declared once, with [`block!`]: its fields, and for each
//! field the torchvision names of its convolution and BatchNorm
//! (`"conv1", "bn1"`). From that one declaration come the struct, dfdx's
//! field list (whose paths *are* torchvision's names, so a checkpoint maps
//! one to one, see [`super::state`]) and the per-layer summary rows
//! ([`super::summary`]). What differs between blocks, the forward pass, is
//! written per block below.
//!
//! Channels and strides are const generics; spatial sizes are `usize` or
//! `Const` (mapped by each layer's stride, see [`super::shape`]): a channel or
//! size mismatch between layers is a compile error. BatchNorm is dfdx's
//! `BatchNorm1D` on the `(B*H*W, C)` view, which has BatchNorm2d's semantics.
//! Training (batch statistics, running averages updated) or evaluation
//! (running statistics) follows the tape: a traced input (`OwnedTape`)
//! trains, an untraced one (`NoneTape`) evaluates.

use super::conv::{Conv2d, Out, im2col_index};
use super::shape::{Act, Halvable, Spatial, Stride, out_side};
use super::summary::{Describe, Row, join};
use dfdx::nn::modules::{BatchNorm1D, Repeated};
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
        if super::dispatch::is_cpu_f32::<E, D>() {
            super::batchnorm::train_forward(bn, x) // fused and multi-threaded
        } else {
            bn.forward_mut(x)
        }
    }
}

/// A layer of NHWC activations: `In` to `Out` channels (`Const<C>`), its
/// spatial sides mapped by `Stride` ([`Stride<1>`] keeps them, [`Stride<2>`]
/// halves them). A network chains layers by equating one's `Out` with the
/// next one's `In`, so a channel mismatch does not compile.
pub trait Layer<E: Dtype, D: Device<E>> {
    /// Input channels.
    type In: ConstDim;
    /// Output channels.
    type Out: ConstDim;
    /// What the layer does to the spatial sides.
    type Stride: Spatial;
    /// Forward; trains or evaluates according to the tape (see the module docs).
    #[allow(clippy::type_complexity)]
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Tensor<(B, H, W, Self::In), E, D, T>,
    ) -> Tensor<(B, SideOut<Self, E, D, H>, SideOut<Self, E, D, W>, Self::Out), E, D, T>;
}

/// The output side of layer `L` for input side `X`.
pub type SideOut<L, E, D, X> = <<L as Layer<E, D>>::Stride as Spatial>::Out<X>;

/// `type In = Const<I>; type Out = Const<O>; type Stride = Stride<S>;`
macro_rules! layer_types {
    ($i:tt, $o:tt, $s:tt) => {
        type In = Const<$i>;
        type Out = Const<$o>;
        type Stride = Stride<$s>;
    };
}

fn bn_nhwc<B: Dim, H: Dim, W: Dim, const C: usize, E: Dtype, D: Device<E>, T: BnTape<E, D>>(
    bn: &mut BatchNorm1D<C, E, D>,
    x: Act<B, H, W, C, E, D, T>,
) -> Act<B, H, W, C, E, D, T> {
    let (b, h, w, c) = *x.shape();
    let rows = x.reshape_like(&(b.size() * h.size() * w.size(), c));
    T::batch_norm(bn, rows).reshape_like(&(b, h, w, c))
}

/// Convolution followed by BatchNorm: `I -> O` channels, a `K`x`K` window,
/// stride `S`, padding `P`.
///
/// The blocks visit its two halves under their own torchvision names
/// (`conv1` and `bn1`, `downsample.0` and `downsample.1`); on its own it
/// visits them as `conv` and `bn`.
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

/// The two visits of a [`ConvBn`] (the field `$field` of `Self`, or `Self` itself for `self_`),
/// under the names `$conv` and `$bn`.
macro_rules! conv_bn_fields {
    ($self:ty, self_, $conv:expr, $bn:expr) => {
        (
            <$self>::module($conv, |s| &s.conv, |s| &mut s.conv),
            <$self>::module($bn, |s| &s.bn, |s| &mut s.bn),
        )
    };
    ($self:ty, $field:ident, $conv:expr, $bn:expr) => {
        (
            <$self>::module($conv, |s| &s.$field.conv, |s| &mut s.$field.conv),
            <$self>::module($bn, |s| &s.$field.bn, |s| &mut s.$field.bn),
        )
    };
}
pub(crate) use conv_bn_fields;

impl<const I: usize, const O: usize, const K: usize, const S: usize, const P: usize, E, D>
    TensorCollection<E, D> for ConvBn<I, O, K, S, P, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
    D: Device<E>,
    rand_distr::StandardNormal: rand_distr::Distribution<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = ConvBn<I, O, K, S, P, E2, D2>;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(conv_bn_fields!(Self, self_, "conv", "bn"), |(conv, bn)| {
            ConvBn { conv, bn }
        })
    }
}

impl<
    const I: usize,
    const O: usize,
    const K: usize,
    const S: usize,
    const P: usize,
    E: Dtype,
    D: Device<E>,
> Layer<E, D> for ConvBn<I, O, K, S, P, E, D>
where
    Stride<S>: Spatial,
{
    layer_types!(I, O, S);
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T> {
        bn_nhwc(&mut self.bn, self.conv.forward(x))
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
        let (oh, ow) = (super::conv_out(h, K, S, P), super::conv_out(w, K, S, P));
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

/// Declares a block of [`ConvBn`] fields, each with the torchvision names of
/// its convolution and BatchNorm; a field marked `shortcut` is the projection
/// beside the main path (it sees the block's input). Generates the struct,
/// its `TensorCollection` (fields visited in declaration order, which is also
/// the order a fresh model draws its random weights in) and its `Describe`.
macro_rules! block {
    (
        $(#[$meta:meta])*
        pub struct $ty:ident<$(const $p:ident: usize),*> {
            $(
                $(#[$fmeta:meta])*
                $field:ident: ConvBn<$($arg:tt),*> => $conv:literal, $bn:literal $(, $shortcut:ident)?;
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $ty<$(const $p: usize,)* E: Dtype, D: Device<E>> {
            $( $(#[$fmeta])* pub $field: ConvBn<$($arg,)* E, D>, )+
        }

        impl<$(const $p: usize,)* E, D> TensorCollection<E, D> for $ty<$($p,)* E, D>
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
                    ($( conv_bn_fields!(Self, $field, $conv, $bn), )+),
                    |($($field,)+)| $ty { $( $field: ConvBn { conv: $field.0, bn: $field.1 }, )+ },
                )
            }
        }

        impl<$(const $p: usize,)* E: Dtype, D: Device<E>> $ty<$($p,)* E, D> {
            /// Each field's (field, convolution, BatchNorm) names.
            pub(crate) const NAMES: &'static [(&'static str, &'static str, &'static str)] =
                &[$((stringify!($field), $conv, $bn),)+];
        }

        impl<$(const $p: usize,)* E: Dtype, D: Device<E>> Describe for $ty<$($p,)* E, D> {
            fn describe(&self, prefix: &str, hw: (usize, usize), rows: &mut Vec<Row>) -> (usize, usize) {
                let mut out = hw;
                $( block!(@row self.$field, join(prefix, $conv), hw, out, rows $(, $shortcut)?); )+
                out
            }
        }
    };
    // A main-path field maps the running size; a shortcut sees the block's input.
    (@row $f:expr, $name:expr, $hw:ident, $out:ident, $rows:ident) => {
        $out = $f.describe(&$name, $out, $rows);
    };
    (@row $f:expr, $name:expr, $hw:ident, $out:ident, $rows:ident, shortcut) => {
        $f.describe(&$name, $hw, $rows);
    };
}

block! {
    /// Basic block, identity shortcut: `C -> C`, stride 1.
    pub struct Basic<const C: usize> {
        /// 3x3 conv + BN.
        a: ConvBn<C, C, 3, 1, 1> => "conv1", "bn1";
        /// 3x3 conv + BN.
        b: ConvBn<C, C, 3, 1, 1> => "conv2", "bn2";
    }
}

block! {
    /// Basic block whose shortcut is projected (option B): `I -> O`, stride `S`.
    pub struct BasicDown<const I: usize, const O: usize, const S: usize> {
        /// 3x3 strided conv + BN.
        a: ConvBn<I, O, 3, S, 1> => "conv1", "bn1";
        /// 3x3 conv + BN.
        b: ConvBn<O, O, 3, 1, 1> => "conv2", "bn2";
        /// 1x1 strided projection + BN.
        down: ConvBn<I, O, 1, S, 0> => "downsample.0", "downsample.1", shortcut;
    }
}

block! {
    /// Basic block with an option-A shortcut (identity, subsampled, new
    /// channels zero; no parameters): `I -> O` channels, stride `S`.
    pub struct BasicA<const I: usize, const O: usize, const S: usize> {
        /// 3x3 strided conv + BN.
        a: ConvBn<I, O, 3, S, 1> => "conv1", "bn1";
        /// 3x3 conv + BN.
        b: ConvBn<O, O, 3, 1, 1> => "conv2", "bn2";
    }
}

block! {
    /// Bottleneck block, identity shortcut: `C -> M -> M -> C` (C = 4M), stride 1.
    pub struct Bottleneck<const C: usize, const M: usize> {
        /// 1x1 reduce + BN.
        a: ConvBn<C, M, 1, 1, 0> => "conv1", "bn1";
        /// 3x3 + BN.
        b: ConvBn<M, M, 3, 1, 1> => "conv2", "bn2";
        /// 1x1 expand + BN.
        c: ConvBn<M, C, 1, 1, 0> => "conv3", "bn3";
    }
}

block! {
    /// Bottleneck block with a projected shortcut: `I -> M -> M -> O`, stride
    /// `S` on the first 1x1 (the paper's v1).
    pub struct BottleneckDown<const I: usize, const M: usize, const O: usize, const S: usize> {
        /// 1x1 strided reduce + BN.
        a: ConvBn<I, M, 1, S, 0> => "conv1", "bn1";
        /// 3x3 + BN.
        b: ConvBn<M, M, 3, 1, 1> => "conv2", "bn2";
        /// 1x1 expand + BN.
        c: ConvBn<M, O, 1, 1, 0> => "conv3", "bn3";
        /// 1x1 strided projection + BN.
        down: ConvBn<I, O, 1, S, 0> => "downsample.0", "downsample.1", shortcut;
    }
}

block! {
    /// Bottleneck with a projected shortcut and the stride on the 3x3
    /// (torchvision's "v1.5"): `I -> M -> M -> O`.
    pub struct BottleneckDownV15<const I: usize, const M: usize, const O: usize, const S: usize> {
        /// 1x1 reduce + BN.
        a: ConvBn<I, M, 1, 1, 0> => "conv1", "bn1";
        /// 3x3 strided + BN.
        b: ConvBn<M, M, 3, S, 1> => "conv2", "bn2";
        /// 1x1 expand + BN.
        c: ConvBn<M, O, 1, 1, 0> => "conv3", "bn3";
        /// 1x1 strided projection + BN.
        down: ConvBn<I, O, 1, S, 0> => "downsample.0", "downsample.1", shortcut;
    }
}

block! {
    /// The "plain" counterpart of a basic block (no shortcut): `I -> O`, stride `S`.
    pub struct PlainBasic<const I: usize, const O: usize, const S: usize> {
        /// 3x3 strided conv + BN.
        a: ConvBn<I, O, 3, S, 1> => "conv1", "bn1";
        /// 3x3 conv + BN.
        b: ConvBn<O, O, 3, 1, 1> => "conv2", "bn2";
    }
}

impl<const C: usize, E: Dtype, D: Device<E>> Layer<E, D> for Basic<C, E, D> {
    layer_types!(C, C, 1);
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, C, E, D, T>,
    ) -> Act<B, H, W, C, E, D, T> {
        let y = self.b.fwd(self.a.fwd(x.with_empty_tape()).relu());
        (y + x).relu()
    }
}

impl<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>> Layer<E, D>
    for BasicDown<I, O, S, E, D>
where
    Stride<S>: Spatial,
{
    layer_types!(I, O, S);
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T> {
        let y = self.b.fwd(self.a.fwd(x.with_empty_tape()).relu());
        (y + self.down.fwd(x)).relu()
    }
}

impl<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>> Layer<E, D>
    for BasicA<I, O, S, E, D>
where
    Stride<S>: Spatial,
{
    layer_types!(I, O, S);
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T> {
        let y = self.b.fwd(self.a.fwd(x.with_empty_tape()).relu());
        (y + shortcut_a::<O, S, _, _, _, _, _, _, _>(x)).relu()
    }
}

/// Option A: `x[:, ::S, ::S, :]` followed by zero channels up to `O`.
pub fn shortcut_a<
    const O: usize,
    const S: usize,
    const I: usize,
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

impl<const C: usize, const M: usize, E: Dtype, D: Device<E>> Layer<E, D>
    for Bottleneck<C, M, E, D>
{
    layer_types!(C, C, 1);
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

/// The forward of the two projecting bottlenecks, which differ only in
/// where their stride sits.
macro_rules! bottleneck_down_fwd {
    ($($ty:ident),+) => {$(
        impl<const I: usize, const M: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>>
            Layer<E, D> for $ty<I, M, O, S, E, D>
        where
            Stride<S>: Spatial,
        {
            layer_types!(I, O, S);
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
    )+};
}
bottleneck_down_fwd!(BottleneckDown, BottleneckDownV15);

impl<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>> Layer<E, D>
    for PlainBasic<I, O, S, E, D>
where
    Stride<S>: Spatial,
{
    layer_types!(I, O, S);
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Act<B, H, W, I, E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T> {
        self.b.fwd(self.a.fwd(x).relu()).relu()
    }
}

/// One stage: a first block (which may project or subsample), then `R`
/// identity blocks. Its blocks are named `0` (the first) to `R`, as in
/// torchvision; its channels and stride are the first block's.
#[derive(Debug, Clone)]
pub struct Stage<First, Rest, const R: usize, E: Dtype, D: Device<E>> {
    /// The first (projecting) block.
    pub first: First,
    /// The identity blocks.
    pub rest: Repeated<Rest, R>,
    _m: PhantomData<(E, D)>,
}

impl<First, Rest, const R: usize, E, D> TensorCollection<E, D> for Stage<First, Rest, R, E, D>
where
    E: Dtype,
    D: Device<E>,
    First: TensorCollection<E, D>,
    Rest: TensorCollection<E, D>,
{
    type To<E2: Dtype, D2: Device<E2>> = Stage<First::To<E2, D2>, Rest::To<E2, D2>, R, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        let names: Vec<String> = (1..=R).map(|i| i.to_string()).collect();
        let rest = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Self::module(
                    name,
                    move |s| &s.rest.modules[i],
                    move |s| &mut s.rest.modules[i],
                )
            })
            .collect::<Vec<_>>();
        visitor.visit_fields(
            (Self::module("0", |s| &s.first, |s| &mut s.first), rest),
            |(first, modules)| Stage {
                first,
                rest: Repeated { modules },
                _m: PhantomData,
            },
        )
    }
}

impl<First, Rest, const R: usize, E, D> Layer<E, D> for Stage<First, Rest, R, E, D>
where
    E: Dtype,
    D: Device<E>,
    First: Layer<E, D>,
    Rest: Layer<E, D, In = First::Out, Out = First::Out, Stride = Stride<1>>,
{
    type In = First::In;
    type Out = First::Out;
    type Stride = First::Stride;
    fn fwd<B: Dim, H: Halvable, W: Halvable, T: BnTape<E, D>>(
        &mut self,
        x: Tensor<(B, H, W, Self::In), E, D, T>,
    ) -> Tensor<
        (
            B,
            SideOut<First, E, D, H>,
            SideOut<First, E, D, W>,
            Self::Out,
        ),
        E,
        D,
        T,
    > {
        let mut y = self.first.fwd(x);
        for block in &mut self.rest.modules {
            y = block.fwd(y);
        }
        y
    }
}

impl<First, Rest, const R: usize, E, D> Describe for Stage<First, Rest, R, E, D>
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_a_subsamples_and_zero_pads() {
        let dev: Cpu = Default::default();
        let x = dev.tensor_from_vec(
            (0..2 * 4 * 4 * 2).map(|v| v as f32).collect(),
            (2usize, 4usize, 4usize, Const::<2>),
        );
        let y = shortcut_a::<4, 2, 2, usize, usize, usize, f32, Cpu, NoneTape>(x.clone());
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

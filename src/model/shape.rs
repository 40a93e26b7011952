//! Spatial sizes at the type level.
//!
//! An activation is `(B, H, W, Const<C>)` where `H` and `W` are either
//! `usize` (checked at run time, what the trainer uses since crop sizes are
//! a command-line choice) or `Const<N>` (checked by the compiler). Every
//! window in a ResNet is centred (`K = 2P + 1`), so a layer's output side
//! depends only on its stride: stride 1 keeps it, stride 2 gives
//! `(N + 1) / 2`. [`Spatial`] says that for [`Stride<1>`] and
//! [`Stride<2>`]; [`Halvable`] is the table behind stride 2, generated here
//! for every `Const<N>` with `N < 1100` (the paper tests up to 640).
//!
//! ```
//! use dfdx::prelude::*;
//! use resnet_imagenet::model::resnet::ResNet18;
//! use resnet_imagenet::model::shape::{Halvable, Half};
//! // 224 -> 112 (stem) -> 56 (pool) -> 56 -> 28 -> 14 -> 7.
//! let _: Const<7> = <Half<Half<Half<Half<Half<Const<224>>>>>> as Default>::default();
//! let dev: Cpu = Default::default();
//! let mut model: ResNet18<10, f32, Cpu> = BuildModule::build(&dev);
//! let x: Tensor<(Const<1>, Const<64>, Const<48>, Const<3>), f32, Cpu> = dev.zeros();
//! let logits: Tensor<Rank2<1, 10>, f32, Cpu> = model.forward(x);
//! ```
//!
//! With `Const` sides the compiler checks every layer's output size: a
//! stride-2 convolution of a 64x64 map is 32x32, and claiming 64x64 does not
//! compile.
//!
//! ```compile_fail
//! use dfdx::prelude::*;
//! use resnet_imagenet::model::Conv2d;
//! let dev: Cpu = Default::default();
//! let conv = Conv2d::<3, 8, 3, 2, 1, f32, Cpu>::from_weight(dev.zeros());
//! let x: Tensor<(Const<1>, Const<64>, Const<64>, Const<3>), f32, Cpu> = dev.zeros();
//! let y: Tensor<(Const<1>, Const<64>, Const<64>, Const<8>), f32, Cpu> = conv.forward(x);
//! ```
//!
//! ```
//! # use dfdx::prelude::*;
//! # use resnet_imagenet::model::Conv2d;
//! # let dev: Cpu = Default::default();
//! # let conv = Conv2d::<3, 8, 3, 2, 1, f32, Cpu>::from_weight(dev.zeros());
//! # let x: Tensor<(Const<1>, Const<64>, Const<64>, Const<3>), f32, Cpu> = dev.zeros();
//! let y: Tensor<(Const<1>, Const<32>, Const<32>, Const<8>), f32, Cpu> = conv.forward(x);
//! ```

use dfdx::shapes::{Const, Dim};
use dfdx::tensor::Tensor;

/// An NHWC activation `(B, H, W, C)`; `H` and `W` are `usize` or `Const`.
pub type Act<B, H, W, const C: usize, E, D, T> = Tensor<(B, H, W, Const<C>), E, D, T>;

/// A spatial side a stride-2 layer can halve; its half can be halved again.
pub trait Halvable: Dim {
    /// `(N + 1) / 2`: the output side of a centred window with stride 2.
    type Half: Halvable;
}

/// The output side of stride 2: `Half<Const<224>>` is `Const<112>`.
pub type Half<X> = <X as Halvable>::Half;

impl Halvable for usize {
    type Half = usize;
}

// impl Halvable for Const<N> { type Half = Const<{ (N + 1) / 2 }>; } for N in 0..1100.
macro_rules! halves {
    ($($h:literal)*) => { $( halves!(@tens $h 0 1 2 3 4 5 6 7 8 9); )* };
    (@tens $h:literal $($t:literal)*) => { $( halves!(@ones $h $t 0 1 2 3 4 5 6 7 8 9); )* };
    (@ones $h:literal $t:literal $($o:literal)*) => {
        $(
            impl Halvable for Const<{ $h * 100 + $t * 10 + $o }> {
                type Half = Const<{ usize::div_ceil($h * 100 + $t * 10 + $o, 2) }>;
            }
        )*
    };
}
halves!(0 1 2 3 4 5 6 7 8 9 10);

/// What a layer does to the spatial sides.
pub trait Spatial {
    /// The output side for input side `X`.
    type Out<X: Halvable>: Halvable;
}

/// A layer with stride `S` (and a centred window).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stride<const S: usize>;

impl Spatial for Stride<1> {
    type Out<X: Halvable> = X;
}

impl Spatial for Stride<2> {
    type Out<X: Halvable> = Half<X>;
}

/// The output side of stride `S` as a value of its type.
///
/// # Panics
/// If `Out` is a `Const` other than `n`: a layer computed a size that its
/// type does not allow (a bug in the layer, not in the input).
pub fn out_side<S: Spatial, X: Halvable>(n: usize) -> S::Out<X> {
    <S::Out<X> as Dim>::from_size(n).unwrap_or_else(|| {
        panic!(
            "output side {n} does not fit its type-level size (input {})",
            std::any::type_name::<X>()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::conv_out;

    #[test]
    fn the_table_agrees_with_the_convolution_arithmetic() {
        fn side<X: Halvable>() -> usize
        where
            Half<X>: Default,
        {
            <Half<X> as Default>::default().size()
        }
        // Centred windows of stride 2 (7x7/3, 3x3/1, 1x1/0) all give (N + 1) / 2.
        for (n, half) in [
            (1, side::<Const<1>>()),
            (7, side::<Const<7>>()),
            (32, side::<Const<32>>()),
            (224, side::<Const<224>>()),
            (225, side::<Const<225>>()),
            (640, side::<Const<640>>()),
            (1099, side::<Const<1099>>()),
        ] {
            for (k, p) in [(7, 3), (3, 1), (1, 0)] {
                assert_eq!(half, conv_out(n, k, 2, p), "N {n}, K {k}");
            }
        }
        let _: Stride<1> = Stride;
        let same: <Stride<1> as Spatial>::Out<Const<9>> = Const;
        assert_eq!(same.size(), 9);
        assert_eq!(out_side::<Stride<2>, usize>(5), 5usize);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_wrong_size_is_a_bug_that_names_itself() {
        let _ = out_side::<Stride<2>, Const<8>>(5);
    }
}

//! Every model by name, behind one trait the trainer is written against.
//!
//! Class counts are type-level (`Linear<C, N>`), so a model is instantiated
//! for each supported class count ([`CLASS_COUNTS`]); [`with_network`]
//! picks the type for a run-time (name, classes) pair and hands it to a
//! [`NetworkUser`].

use super::blocks::Layer;
use super::cifar::{CifarNet, ResNet20, ResNet32, ResNet44, ResNet56, ResNet110};
use super::cifar::{Plain20, Plain32, Plain44, Plain56, Plain110};
use super::lower::Lower;
use super::resnet::*;
use super::summary::Describe;
use dfdx::nn::modules::Linear;
use dfdx::prelude::*;

/// Class counts the trainer is compiled for (Fashion-MNIST/CIFAR-10, the
/// bundled sample, CIFAR-100-style, ImageNet).
pub const CLASS_COUNTS: [usize; 4] = [10, 12, 100, 1000];

/// NHWC input with a run-time batch and spatial size.
pub type Input<D, T = NoneTape> = Tensor<(usize, usize, usize, Const<3>), f32, D, T>;
/// Logits `(batch, classes)`.
pub type Logits<D, T = NoneTape> = Tensor<(usize, usize), f32, D, T>;

/// `(B, Const<N>)` logits as `(B, N)`, the trait's class-count-free shape.
fn flat<const N: usize, D: Device<f32>, T: Tape<f32, D>>(
    y: Tensor<(usize, Const<N>), f32, D, T>,
) -> Logits<D, T> {
    let b = y.shape().0;
    y.reshape_like(&(b, N))
}

/// What the trainer needs of a model.
pub trait Network<D: Device<f32>>:
    TensorCollection<f32, D, To<f32, D> = Self> + Describe + Lower + Sized
{
    /// Number of classes.
    const CLASSES: usize;
    /// Training forward: batch statistics, running averages updated, traced.
    fn forward_train(&mut self, x: Input<D, OwnedTape<f32, D>>) -> Logits<D, OwnedTape<f32, D>>;
    /// Evaluation forward: running statistics, no tape.
    fn forward_eval(&mut self, x: Input<D>) -> Logits<D>;
}

impl<L1, L2, L3, L4, const C: usize, const N: usize, D> Network<D>
    for ResNet<L1, L2, L3, L4, Linear<C, N, f32, D>, f32, D>
where
    D: Device<f32>,
    Self: TensorCollection<f32, D, To<f32, D> = Self> + Describe + Lower,
    L1: Layer<f32, D, In = Const<64>>,
    L2: Layer<f32, D, In = L1::Out>,
    L3: Layer<f32, D, In = L2::Out>,
    L4: Layer<f32, D, In = L3::Out, Out = Const<C>>,
{
    const CLASSES: usize = N;
    fn forward_train(&mut self, x: Input<D, OwnedTape<f32, D>>) -> Logits<D, OwnedTape<f32, D>> {
        flat(self.forward(x))
    }
    fn forward_eval(&mut self, x: Input<D>) -> Logits<D> {
        flat(self.forward(x))
    }
}

impl<L1, L2, L3, const N: usize, D> Network<D> for CifarNet<L1, L2, L3, N, f32, D>
where
    D: Device<f32>,
    Self: TensorCollection<f32, D, To<f32, D> = Self> + Describe + Lower,
    L1: Layer<f32, D, In = Const<16>, Out = Const<16>>,
    L2: Layer<f32, D, In = Const<16>, Out = Const<32>>,
    L3: Layer<f32, D, In = Const<32>, Out = Const<64>>,
{
    const CLASSES: usize = N;
    fn forward_train(&mut self, x: Input<D, OwnedTape<f32, D>>) -> Logits<D, OwnedTape<f32, D>> {
        flat(self.forward(x))
    }
    fn forward_eval(&mut self, x: Input<D>) -> Logits<D> {
        flat(self.forward(x))
    }
}

/// The input family of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// ImageNet networks (7x7/2 stem, max pool): 224x224 crops.
    ImageNet,
    /// The paper's CIFAR networks: 32x32 inputs.
    Cifar,
}

/// The family of a model name, if it exists.
pub fn family(name: &str) -> Option<Family> {
    MODELS.iter().find(|m| m.0 == name).map(|m| m.1)
}

impl Family {
    /// The class count of the family's own data set (ImageNet 1000,
    /// CIFAR-10): the instance [`with_standard_network`] picks.
    pub const fn standard_classes(self) -> usize {
        match self {
            Family::ImageNet => 1000,
            Family::Cifar => 10,
        }
    }
}

/// Code that runs with a concrete model type.
pub trait NetworkUser<D: Device<f32>> {
    /// What it returns.
    type Output;
    /// Runs with model type `M`.
    fn run<M: Network<D>>(self) -> Self::Output;
}

/// Code that runs with one model type on two devices: `M` on `R` and the
/// same network on `T` (`M::To<f32, T>`), e.g. a parity check.
pub trait NetworkPairUser<R: Device<f32>, T: Device<f32>> {
    /// What it returns.
    type Output;
    /// Runs with model type `M` (on `R`) and its twin on `T`.
    fn run<M>(self) -> Self::Output
    where
        M: Network<R>,
        <M as TensorCollection<f32, R>>::To<f32, T>: Network<T>;
}

/// The per-layer table ([`super::summary::table`]) of model `name` with
/// `classes` classes at `size x size`.
pub fn summary_table(name: &str, classes: usize, size: usize) -> Result<String, ZooError> {
    struct Of(usize);
    impl NetworkUser<Cpu> for Of {
        type Output = String;
        fn run<M: Network<Cpu>>(self) -> String {
            super::summary::table(&M::build(&Cpu::default()), self.0, self.0)
        }
    }
    with_network(name, classes, Of(size))
}

/// Why no model type fits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZooError {
    /// Not a known model name.
    #[error("unknown model {name:?}; known: {}", MODELS.iter().map(|m| m.0).collect::<Vec<_>>().join(", "))]
    UnknownModel {
        /// The name given.
        name: String,
    },
    /// The class count has no compiled instance.
    #[error(
        "{0} classes: models are compiled for {CLASS_COUNTS:?} classes (add the count to zoo::CLASS_COUNTS and the match in zoo::with_network)"
    )]
    UnsupportedClasses(usize),
}

/// The one table of model names: name, type alias, family, description.
/// It generates [`MODELS`] and the dispatch in [`with_network`].
macro_rules! models {
    ($($name:literal => $alias:ident, $family:ident, $desc:literal;)+) => {
        /// Every model name: (name, family, description).
        pub const MODELS: &[(&str, Family, &str)] = &[$(($name, Family::$family, $desc),)+];

        /// Runs `user` with the model type named `name` for `classes` classes.
        pub fn with_network<D: Device<f32>, U: NetworkUser<D>>(
            name: &str,
            classes: usize,
            user: U,
        ) -> Result<U::Output, ZooError> {
            match name {
                $($name => by_classes!($alias, classes, user),)+
                other => Err(ZooError::UnknownModel {
                    name: other.to_string(),
                }),
            }
        }

        /// Runs `user` with the model named `name` at its family's
        /// standard class count ([`Family::standard_classes`]): one
        /// instance per model, for tools that compile per-device code
        /// for every model (`gpu-check`).
        pub fn with_standard_network<D: Device<f32>, U: NetworkUser<D>>(
            name: &str,
            user: U,
        ) -> Result<U::Output, ZooError> {
            match name {
                $($name => Ok(user.run::<$alias<{ Family::$family.standard_classes() }, f32, D>>()),)+
                other => Err(ZooError::UnknownModel {
                    name: other.to_string(),
                }),
            }
        }

        /// [`with_standard_network`] on two devices: `user` gets the model
        /// named `name` on `R` and its twin on `T`.
        pub fn with_standard_network_pair<R: Device<f32>, T: Device<f32>, U: NetworkPairUser<R, T>>(
            name: &str,
            user: U,
        ) -> Result<U::Output, ZooError> {
            match name {
                $($name => Ok(user.run::<$alias<{ Family::$family.standard_classes() }, f32, R>>()),)+
                other => Err(ZooError::UnknownModel {
                    name: other.to_string(),
                }),
            }
        }
    };
}

macro_rules! by_classes {
    ($alias:ident, $classes:expr, $user:expr) => {
        match $classes {
            10 => Ok($user.run::<$alias<10, f32, D>>()),
            12 => Ok($user.run::<$alias<12, f32, D>>()),
            100 => Ok($user.run::<$alias<100, f32, D>>()),
            1000 => Ok($user.run::<$alias<1000, f32, D>>()),
            n => Err(ZooError::UnsupportedClasses(n)),
        }
    };
}

models! {
    "resnet18" => ResNet18, ImageNet, "ResNet-18, basic blocks 2-2-2-2, option B";
    "resnet34" => ResNet34, ImageNet, "ResNet-34, basic blocks 3-4-6-3, option B";
    "resnet34a" => ResNet34A, ImageNet, "ResNet-34, option A (zero-padded identity shortcuts)";
    "resnet34c" => ResNet34C, ImageNet, "ResNet-34, option C (all shortcuts projected)";
    "resnet50" => ResNet50, ImageNet, "ResNet-50, bottlenecks 3-4-6-3, stride on the first 1x1 (v1)";
    "resnet101" => ResNet101, ImageNet, "ResNet-101, bottlenecks 3-4-23-3 (v1)";
    "resnet152" => ResNet152, ImageNet, "ResNet-152, bottlenecks 3-8-36-3 (v1)";
    "resnet50c" => ResNet50C, ImageNet, "ResNet-50, option C";
    "resnet50-v1.5" => ResNet50V15, ImageNet, "ResNet-50, stride on the 3x3 (torchvision)";
    "resnet101-v1.5" => ResNet101V15, ImageNet, "ResNet-101, stride on the 3x3";
    "resnet152-v1.5" => ResNet152V15, ImageNet, "ResNet-152, stride on the 3x3";
    "plain18" => Plain18, ImageNet, "plain 18-layer net (no shortcuts)";
    "plain34" => Plain34, ImageNet, "plain 34-layer net (no shortcuts)";
    "resnet20" => ResNet20, Cifar, "CIFAR ResNet-20 (n=3), option A";
    "resnet32" => ResNet32, Cifar, "CIFAR ResNet-32 (n=5)";
    "resnet44" => ResNet44, Cifar, "CIFAR ResNet-44 (n=7)";
    "resnet56" => ResNet56, Cifar, "CIFAR ResNet-56 (n=9)";
    "resnet110" => ResNet110, Cifar, "CIFAR ResNet-110 (n=18)";
    "plain20" => Plain20, Cifar, "CIFAR plain-20";
    "plain32" => Plain32, Cifar, "CIFAR plain-32";
    "plain44" => Plain44, Cifar, "CIFAR plain-44";
    "plain56" => Plain56, Cifar, "CIFAR plain-56";
    "plain110" => Plain110, Cifar, "CIFAR plain-110";
}

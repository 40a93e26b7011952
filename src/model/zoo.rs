//! Every model by name, behind one trait the trainer is written against.
//!
//! Class counts are type-level (`Linear<C, N>`), so a model is instantiated
//! for each supported class count ([`CLASS_COUNTS`]); [`with_network`]
//! picks the type for a run-time (name, classes) pair and hands it to a
//! [`NetworkUser`].

use super::cifar::{CifarNet, ResNet20, ResNet32, ResNet44, ResNet56, ResNet110};
use super::cifar::{Plain20, Plain32, Plain44, Plain56, Plain110};
use super::resnet::*;
use super::shape::Stride;
use super::summary::Describe;
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
    TensorCollection<f32, D, To<f32, D> = Self> + Describe + Sized
{
    /// Number of classes.
    const CLASSES: usize;
    /// Training forward: batch statistics, running averages updated, traced.
    fn forward_train(&mut self, x: Input<D, OwnedTape<f32, D>>) -> Logits<D, OwnedTape<f32, D>>;
    /// Evaluation forward: running statistics, no tape.
    fn forward_eval(&mut self, x: Input<D>) -> Logits<D>;
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
    D,
> Network<D> for ResNet<L1, L2, L3, L4, C1, C2, C3, C4, N, f32, D>
where
    D: Device<f32>,
    Self: TensorCollection<f32, D, To<f32, D> = Self> + Describe,
    L1: Layer<64, C1, Stride<1>, f32, D>,
    L2: Layer<C1, C2, Stride<2>, f32, D>,
    L3: Layer<C2, C3, Stride<2>, f32, D>,
    L4: Layer<C3, C4, Stride<2>, f32, D>,
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
    Self: TensorCollection<f32, D, To<f32, D> = Self> + Describe,
    L1: Layer<16, 16, Stride<1>, f32, D>,
    L2: Layer<16, 32, Stride<2>, f32, D>,
    L3: Layer<32, 64, Stride<2>, f32, D>,
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

/// Every model name: (name, family, description).
pub const MODELS: &[(&str, Family, &str)] = &[
    (
        "resnet18",
        Family::ImageNet,
        "ResNet-18, basic blocks 2-2-2-2, option B",
    ),
    (
        "resnet34",
        Family::ImageNet,
        "ResNet-34, basic blocks 3-4-6-3, option B",
    ),
    (
        "resnet34a",
        Family::ImageNet,
        "ResNet-34, option A (zero-padded identity shortcuts)",
    ),
    (
        "resnet34c",
        Family::ImageNet,
        "ResNet-34, option C (all shortcuts projected)",
    ),
    (
        "resnet50",
        Family::ImageNet,
        "ResNet-50, bottlenecks 3-4-6-3, stride on the first 1x1 (v1)",
    ),
    (
        "resnet101",
        Family::ImageNet,
        "ResNet-101, bottlenecks 3-4-23-3 (v1)",
    ),
    (
        "resnet152",
        Family::ImageNet,
        "ResNet-152, bottlenecks 3-8-36-3 (v1)",
    ),
    ("resnet50c", Family::ImageNet, "ResNet-50, option C"),
    (
        "resnet50-v1.5",
        Family::ImageNet,
        "ResNet-50, stride on the 3x3 (torchvision)",
    ),
    (
        "resnet101-v1.5",
        Family::ImageNet,
        "ResNet-101, stride on the 3x3",
    ),
    (
        "resnet152-v1.5",
        Family::ImageNet,
        "ResNet-152, stride on the 3x3",
    ),
    (
        "plain18",
        Family::ImageNet,
        "plain 18-layer net (no shortcuts)",
    ),
    (
        "plain34",
        Family::ImageNet,
        "plain 34-layer net (no shortcuts)",
    ),
    ("resnet20", Family::Cifar, "CIFAR ResNet-20 (n=3), option A"),
    ("resnet32", Family::Cifar, "CIFAR ResNet-32 (n=5)"),
    ("resnet44", Family::Cifar, "CIFAR ResNet-44 (n=7)"),
    ("resnet56", Family::Cifar, "CIFAR ResNet-56 (n=9)"),
    ("resnet110", Family::Cifar, "CIFAR ResNet-110 (n=18)"),
    ("plain20", Family::Cifar, "CIFAR plain-20"),
    ("plain32", Family::Cifar, "CIFAR plain-32"),
    ("plain44", Family::Cifar, "CIFAR plain-44"),
    ("plain56", Family::Cifar, "CIFAR plain-56"),
    ("plain110", Family::Cifar, "CIFAR plain-110"),
];

/// The family of a model name, if it exists.
pub fn family(name: &str) -> Option<Family> {
    MODELS.iter().find(|m| m.0 == name).map(|m| m.1)
}

/// Code that runs with a concrete model type.
pub trait NetworkUser<D: Device<f32>> {
    /// What it returns.
    type Output;
    /// Runs with model type `M`.
    fn run<M: Network<D>>(self) -> Self::Output;
}

/// Why no model type fits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

/// Runs `user` with the model type named `name` for `classes` classes.
pub fn with_network<D: Device<f32>, U: NetworkUser<D>>(
    name: &str,
    classes: usize,
    user: U,
) -> Result<U::Output, ZooError> {
    match name {
        "resnet18" => by_classes!(ResNet18, classes, user),
        "resnet34" => by_classes!(ResNet34, classes, user),
        "resnet34a" => by_classes!(ResNet34A, classes, user),
        "resnet34c" => by_classes!(ResNet34C, classes, user),
        "resnet50" => by_classes!(ResNet50, classes, user),
        "resnet101" => by_classes!(ResNet101, classes, user),
        "resnet152" => by_classes!(ResNet152, classes, user),
        "resnet50c" => by_classes!(ResNet50C, classes, user),
        "resnet50-v1.5" => by_classes!(ResNet50V15, classes, user),
        "resnet101-v1.5" => by_classes!(ResNet101V15, classes, user),
        "resnet152-v1.5" => by_classes!(ResNet152V15, classes, user),
        "plain18" => by_classes!(Plain18, classes, user),
        "plain34" => by_classes!(Plain34, classes, user),
        "resnet20" => by_classes!(ResNet20, classes, user),
        "resnet32" => by_classes!(ResNet32, classes, user),
        "resnet44" => by_classes!(ResNet44, classes, user),
        "resnet56" => by_classes!(ResNet56, classes, user),
        "resnet110" => by_classes!(ResNet110, classes, user),
        "plain20" => by_classes!(Plain20, classes, user),
        "plain32" => by_classes!(Plain32, classes, user),
        "plain44" => by_classes!(Plain44, classes, user),
        "plain56" => by_classes!(Plain56, classes, user),
        "plain110" => by_classes!(Plain110, classes, user),
        other => Err(ZooError::UnknownModel {
            name: other.to_string(),
        }),
    }
}

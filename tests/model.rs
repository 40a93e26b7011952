//! The loader feeding a model: real photos, the paper's CIFAR augmentation,
//! ResNet-20, SGD with momentum and weight decay.

use crate::util::packed_sample;
use dfdx::optim::{Momentum, Sgd, SgdConfig, WeightDecay};
use dfdx::prelude::*;
use resnet_imagenet::augment::CifarAugment;
use resnet_imagenet::loader::{LoaderBuilder, OutputKind};
use resnet_imagenet::model::cifar::ResNet20;
use resnet_imagenet::reader::Dataset;
use std::sync::Arc;

#[test]
fn resnet20_learns_a_fixed_batch_of_real_photos_from_the_loader() {
    let ds = Arc::new(Dataset::open(packed_sample().join("train")).unwrap());
    assert_eq!(ds.num_classes(), 12);
    let loader = LoaderBuilder::new()
        .batch_size(16)
        .workers(2)
        .seed(1)
        .cifar(CifarAugment::default())
        .output(OutputKind::F32Hwc)
        .build(ds)
        .unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let b = batch.len();
    let dev: Cpu = Cpu::seed_from_u64(0);
    assert_eq!(
        batch.shape(),
        [b, 32, 32, 3],
        "channels-last, as the models"
    );
    let x = dev.tensor_from_vec(batch.images().to_vec(), (b, 32usize, 32usize, Const::<3>));
    let mut onehot = vec![0f32; b * 12];
    for (i, &l) in batch.labels().iter().enumerate() {
        onehot[i * 12 + l as usize] = 1.0;
    }
    let y = dev.tensor_from_vec(onehot, (b, Const::<12>));
    let mut model: ResNet20<12, f32, Cpu> = BuildModule::build(&dev);
    let mut opt = Sgd::new(
        &model,
        SgdConfig {
            lr: 0.1,
            momentum: Some(Momentum::Classic(0.9)),
            weight_decay: Some(WeightDecay::L2(1e-4)),
        },
    );
    let mut grads = model.alloc_grads();
    let mut losses = Vec::new();
    for _ in 0..12 {
        let logits = model.forward(x.clone().traced(grads));
        let loss = cross_entropy_with_logits_loss(logits, y.clone());
        losses.push(loss.array());
        grads = loss.backward();
        opt.update(&mut model, &grads).unwrap();
        model.zero_grads(&mut grads);
    }
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[11] < losses[0] * 0.5, "{losses:?}");
}

/// Type-level sides: every layer's output size is part of its type, so
/// these annotations are checked by the compiler, and the values by the run.
#[test]
fn const_sized_inputs_carry_their_sizes_through_every_stage() {
    use resnet_imagenet::model::blocks::Layer;
    use resnet_imagenet::model::cifar::ResNet20;
    use resnet_imagenet::model::pool::max_pool;
    use resnet_imagenet::model::resnet::{ResNet18, ResNet50};
    type Img<const H: usize, const W: usize, const C: usize> =
        Tensor<(Const<1>, Const<H>, Const<W>, Const<C>), f32, Cpu>;
    let dev: Cpu = Cpu::seed_from_u64(0);

    // ResNet-50 at 224x224: 112 (stem), 56 (pool), 56, 28, 14, 7 (stages).
    let mut m: ResNet50<10, f32, Cpu> = BuildModule::build(&dev);
    let x: Img<224, 224, 3> = dev.sample_normal();
    let x: Img<112, 112, 64> = m.stem.fwd(x).relu();
    let x: Img<56, 56, 64> = max_pool::<3, 2, 1, _, _, _, 64, _, _, _>(x);
    let x: Img<56, 56, 256> = m.layer1.fwd(x);
    let x: Img<28, 28, 512> = m.layer2.fwd(x);
    let x: Img<14, 14, 1024> = m.layer3.fwd(x);
    let x: Img<7, 7, 2048> = m.layer4.fwd(x);
    assert!(x.as_vec().iter().all(|v| v.is_finite()));

    // Odd sides round up at each stride-2 layer: 227 -> 114 -> 57 -> 57 -> 29 -> 15 -> 8.
    let mut m: ResNet18<10, f32, Cpu> = BuildModule::build(&dev);
    let x: Img<227, 161, 3> = dev.sample_normal();
    let x: Img<114, 81, 64> = m.stem.fwd(x).relu();
    let x: Img<57, 41, 64> = max_pool::<3, 2, 1, _, _, _, 64, _, _, _>(x);
    let x: Img<57, 41, 64> = m.layer1.fwd(x);
    let x: Img<29, 21, 128> = m.layer2.fwd(x);
    let x: Img<15, 11, 256> = m.layer3.fwd(x);
    let x: Img<8, 6, 512> = m.layer4.fwd(x);
    assert_eq!(x.shape().1.size(), 8);

    // The CIFAR nets: 32 -> 32, 16, 8; whole-network forwards give Const logits.
    let mut m: ResNet20<10, f32, Cpu> = BuildModule::build(&dev);
    let x: Img<32, 32, 3> = dev.sample_normal();
    let y: Img<32, 32, 16> = m.stem.fwd(x.clone()).relu();
    let y: Img<32, 32, 16> = m.layer1.fwd(y);
    let y: Img<16, 16, 32> = m.layer2.fwd(y);
    let y: Img<8, 8, 64> = m.layer3.fwd(y);
    assert!(y.as_vec().iter().all(|v| v.is_finite()));
    let logits: Tensor<Rank2<1, 10>, f32, Cpu> = m.forward(x.clone());

    // The same image with runtime sizes gives the same logits.
    let dynamic = x.reshape_like(&(1usize, 32usize, 32usize, Const::<3>));
    let again = m.forward(dynamic);
    assert_eq!(again.shape(), &(1usize, Const::<10>));
    assert_eq!(logits.as_vec(), again.as_vec());
}

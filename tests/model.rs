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

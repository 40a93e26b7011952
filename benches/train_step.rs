//! One SGD training step (forward, backward, update with momentum and weight
//! decay) per model, at small and at 224x224 inputs, on the CPU:
//! `cargo bench --bench train_step` (or `-- resnet50` for one model).
//! Throughput is in images. The 224x224 steps of the big models take
//! seconds each, so the groups use criterion's smallest sample count.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dfdx::prelude::*;
use resnet_imagenet::model::cifar::{ResNet20, ResNet56};
use resnet_imagenet::model::resnet::{ResNet18, ResNet34, ResNet50, ResNet101, ResNet152};
use resnet_imagenet::model::zoo::{Input, Network};
use resnet_imagenet::train::cpu_device;
use resnet_imagenet::train::sgd::Sgd;
use std::time::Duration;

fn bench_model<M: Network<Cpu>>(c: &mut Criterion, name: &str, batch: usize, side: usize) {
    let dev = cpu_device(0);
    let mut model = M::build(&dev);
    let mut sgd: Sgd<Cpu> = Sgd::new(0.9, 1e-4);
    let x: Input<Cpu> = dev.sample_normal_like(&(batch, side, side, Const::<3>));
    let mut onehot = vec![0f32; batch * M::CLASSES];
    for i in 0..batch {
        onehot[i * M::CLASSES + i % M::CLASSES] = 1.0;
    }
    let y = dev.tensor_from_vec(onehot, (batch, M::CLASSES));
    let mut g = c.benchmark_group(format!("train_step/{name}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(batch as u64));
    g.bench_function(format!("b{batch}_{side}x{side}"), |b| {
        b.iter(|| {
            let logits = model.forward_train(x.clone().traced(Gradients::leaky()));
            let loss = cross_entropy_with_logits_loss(logits, y.clone());
            let grads = loss.backward();
            sgd.update(&mut model, &grads, 0.01);
        })
    });
    g.finish();
}

fn small(c: &mut Criterion) {
    bench_model::<ResNet20<10, f32, Cpu>>(c, "resnet20", 128, 32);
    bench_model::<ResNet56<10, f32, Cpu>>(c, "resnet56", 32, 32);
    bench_model::<ResNet18<1000, f32, Cpu>>(c, "resnet18", 32, 32);
    bench_model::<ResNet50<1000, f32, Cpu>>(c, "resnet50", 8, 32);
}

fn imagenet(c: &mut Criterion) {
    bench_model::<ResNet18<1000, f32, Cpu>>(c, "resnet18", 8, 224);
    bench_model::<ResNet34<1000, f32, Cpu>>(c, "resnet34", 4, 224);
    bench_model::<ResNet50<1000, f32, Cpu>>(c, "resnet50", 8, 224);
    bench_model::<ResNet101<1000, f32, Cpu>>(c, "resnet101", 2, 224);
    bench_model::<ResNet152<1000, f32, Cpu>>(c, "resnet152", 2, 224);
}

criterion_group!(benches, small, imagenet);
criterion_main!(benches);

//! SGD with momentum and weight decay, PyTorch's formulation, with its
//! momentum buffers visible so checkpoints can save and restore them:
//!
//! ```text
//! g = grad + wd * p
//! v = g                 (first step)
//! v = momentum * v + g  (after)
//! p = p - lr * v
//! ```
//!
//! Buffers are keyed by the parameter's dfdx path, so they survive a
//! save/load and never depend on tensor ids. Parameters are replaced by
//! new tensors each step; build a fresh `Gradients` per step (the trainer
//! does) rather than reusing one allocated for the old tensors.

use dfdx::nn::tensor_collection::{
    RecursiveWalker, ScalarOptions, TensorCollection, TensorOptions, TensorViewer, TensorVisitor,
    ViewTensorMut, ViewTensorName,
};
use dfdx::prelude::*;
use std::collections::BTreeMap;

/// SGD state: hyperparameters and one momentum buffer per parameter.
#[derive(Debug)]
pub struct Sgd<D: Device<f32>> {
    /// Momentum (0.9 in the paper).
    pub momentum: f32,
    /// L2 weight decay (1e-4 in the paper), applied to every parameter.
    pub weight_decay: f32,
    velocity: BTreeMap<String, Tensor<(usize,), f32, D>>,
}

impl<D: Device<f32>> Sgd<D> {
    /// No momentum buffers yet.
    pub fn new(momentum: f32, weight_decay: f32) -> Self {
        Sgd {
            momentum,
            weight_decay,
            velocity: BTreeMap::new(),
        }
    }

    /// One step with learning rate `lr` over every trainable tensor of `model`.
    pub fn update<M: TensorCollection<f32, D>>(
        &mut self,
        model: &mut M,
        grads: &Gradients<f32, D>,
        lr: f32,
    ) {
        let mut step = Step {
            sgd: self,
            grads,
            lr,
        };
        M::iter_tensors(&mut RecursiveWalker {
            m: (model, String::new()),
            f: &mut step,
        })
        .expect("SGD step does not fail");
    }

    /// Momentum buffers by parameter path (for checkpoints).
    pub fn buffers(&self) -> BTreeMap<String, Vec<f32>> {
        self.velocity
            .iter()
            .map(|(k, v)| (k.clone(), v.as_vec()))
            .collect()
    }

    /// Restores buffers saved by [`Sgd::buffers`].
    pub fn set_buffers(&mut self, dev: &D, buffers: BTreeMap<String, Vec<f32>>) {
        self.velocity = buffers
            .into_iter()
            .map(|(k, v)| {
                let n = v.len();
                (k, dev.tensor_from_vec(v, (n,)))
            })
            .collect();
    }
}

struct Step<'a, D: Device<f32>> {
    sgd: &'a mut Sgd<D>,
    grads: &'a Gradients<f32, D>,
    lr: f32,
}

impl<D: Device<f32>> TensorVisitor<f32, D> for Step<'_, D> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = D::Err;
    type E2 = f32;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, f32, D>,
        (p, path): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, f32, D>>,
    ) -> Result<Option<Tensor<S, f32, D>>, Self::Err> {
        if !opts.do_gradient_update {
            return Ok(None);
        }
        let shape = *p.shape();
        let n = shape.num_elements();
        let flat = p.clone().reshape_like(&(n,));
        let g = self.grads.get(p).reshape_like(&(n,)) + flat.clone() * self.sgd.weight_decay;
        let v = match self.sgd.velocity.remove(&path) {
            Some(v) => v * self.sgd.momentum + g,
            None => g,
        };
        *p = (flat - v.clone() * self.lr).reshape_like(&shape);
        self.sgd.velocity.insert(path, v);
        Ok(None)
    }

    fn visit_scalar<N: num_traits::NumCast>(
        &mut self,
        _: ScalarOptions<N>,
        _: <Self::Viewer as TensorViewer>::View<'_, N>,
    ) -> Result<Option<N>, Self::Err> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::optim::{Momentum, Optimizer, SgdConfig, WeightDecay};

    #[test]
    fn matches_dfdx_sgd_with_classic_momentum_and_l2() {
        let dev: Cpu = Cpu::seed_from_u64(1);
        let mut a: dfdx::nn::modules::Linear<5, 3, f32, Cpu> = BuildModule::build(&dev);
        let mut b = a.clone();
        let x: Tensor<Rank2<4, 5>, f32, Cpu> = dev.sample_normal();
        let mut ours = Sgd::new(0.9, 1e-2);
        let mut theirs = dfdx::optim::Sgd::new(
            &b,
            SgdConfig {
                lr: 0.1,
                momentum: Some(Momentum::Classic(0.9)),
                weight_decay: Some(WeightDecay::L2(1e-2)),
            },
        );
        for _ in 0..4 {
            let g = a
                .forward(x.clone().traced(Gradients::leaky()))
                .square()
                .sum()
                .backward();
            ours.update(&mut a, &g, 0.1);
            let g = b
                .forward(x.clone().traced(b.alloc_grads()))
                .square()
                .sum()
                .backward();
            theirs.update(&mut b, &g).unwrap();
        }
        for (u, v) in a.weight.as_vec().iter().zip(b.weight.as_vec()) {
            assert!((u - v).abs() < 1e-5, "{u} vs {v}");
        }
        assert_eq!(ours.buffers().len(), 2);
    }
}

//! Every block lowers itself into the engine's static plan
//! ([`crate::engine::plan`]): the same graph as its dfdx forward pass, with
//! what the graph allows fused. Each [`ConvBn`] is a convolution and one
//! BatchNorm op that also adds the block's shortcut and applies the ReLU
//! where the forward pass does (BN+ReLU inside a block, BN+add+ReLU at its
//! end). Parameters are named by their dfdx paths, so the engine reads and
//! writes the model's own tensors ([`crate::engine::Engine::read_from`]).

use super::blocks::{
    Basic, BasicA, BasicDown, Bottleneck, BottleneckDown, BottleneckDownV15, ConvBn, PlainBasic,
    Stage,
};
use super::cifar::CifarNet;
use super::resnet::ResNet;
use super::summary::join;
use crate::engine::plan::{Act, ConvGeom, GradOut, Layout, Op, PlanBuilder};
use dfdx::nn::modules::{BatchNorm1D, Linear};
use dfdx::prelude::*;

/// A layer that lowers itself into a plan.
pub trait Lower {
    /// Appends the layer's ops reading `x`; `prefix` is its dfdx path.
    /// Returns its output.
    fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act;
}

/// What follows a BatchNorm: a residual added, then a ReLU.
#[derive(Clone, Copy)]
struct Post {
    residual: Option<Act>,
    relu: bool,
}

const RELU: Post = Post {
    residual: None,
    relu: true,
};
const NONE: Post = Post {
    residual: None,
    relu: false,
};
fn add_relu(r: Act) -> Post {
    Post {
        residual: Some(r),
        relu: true,
    }
}

fn grad(buf: Option<usize>) -> Option<GradOut> {
    buf.map(|buf| GradOut {
        buf,
        accumulate: false,
    })
}

/// Convolution without bias, `path.weight`.
fn conv(
    p: &mut PlanBuilder,
    path: &str,
    x: Act,
    (o, k, s, pad): (usize, usize, usize, usize),
) -> Act {
    let g = ConvGeom::new(p.batch(), (x.h, x.w, x.c), o, (k, s, pad));
    let w = p.param(
        join(path, "weight"),
        o * x.c * k * k,
        Layout::ConvKkcO { o, c: x.c, k },
    );
    let y = p.act(&format!("{path} out"), g.oh, g.ow, o);
    let scratch = |p: &mut PlanBuilder, what: &str, backward: bool| {
        let len = match (g.grouped(), backward) {
            (true, _) => g.group_scratch(backward),
            (false, true) => g.wide_backward_scratch(),
            (false, false) => g.rows() * g.cols(),
        };
        g.single_tap()
            .is_none()
            .then(|| p.buf(format!("{path} {what}"), len))
    };
    let cols = scratch(p, "cols", false);
    // Backward: the columns of x (for the weight's gradient), then, in the
    // same buffer, those of dy (or the columns' gradient) for dx.
    let bcols = scratch(p, "backward cols", true);
    p.push(Op::Conv {
        g,
        x: x.buf,
        y: y.buf,
        w,
        dx: grad(x.grad),
        dy: y.grad.expect("activation gradient"),
        cols,
        bcols,
        x_bf16: None,
        y_bf16: None,
        dy_bf16: None,
    });
    y
}

fn batch_norm<const C: usize, E: Dtype, D: Device<E>>(
    p: &mut PlanBuilder,
    path: &str,
    bn: &BatchNorm1D<C, E, D>,
    x: Act,
    post: Post,
) -> Act {
    assert_eq!(x.c, C);
    let gamma = p.param(join(path, "scale"), C, Layout::Same);
    let beta = p.param(join(path, "bias"), C, Layout::Same);
    let mean = p.state(join(path, "running_mean"), C);
    let var = p.state(join(path, "running_var"), C);
    let y = p.act(&format!("{path} out"), x.h, x.w, C);
    let saved = p.buf(format!("{path} saved statistics"), 2 * C);
    p.push(Op::BatchNorm {
        rows: p.batch() * x.h * x.w,
        c: C,
        x: x.buf,
        y: y.buf,
        gamma,
        beta,
        mean,
        var,
        momentum: bn.momentum,
        epsilon: bn.epsilon,
        residual: post.residual.map(|r| {
            assert_eq!((r.h, r.w, r.c), (x.h, x.w, C), "{path}: shortcut shape");
            (r.buf, grad(r.grad))
        }),
        relu: post.relu,
        dx: grad(x.grad),
        dy: y.grad.expect("activation gradient"),
        saved,
        x_bf16: None,
        y_bf16: None,
        dx_bf16: None,
        residual_bf16: None,
    });
    y
}

impl<const I: usize, const O: usize, const K: usize, const S: usize, const P: usize, E, D>
    ConvBn<I, O, K, S, P, E, D>
where
    E: Dtype,
    D: Device<E>,
{
    fn lower_as(
        &self,
        p: &mut PlanBuilder,
        prefix: &str,
        (conv_name, bn_name): (&str, &str),
        x: Act,
        post: Post,
    ) -> Act {
        assert_eq!(x.c, I, "{prefix}.{conv_name}: input channels");
        let y = conv(p, &join(prefix, conv_name), x, (O, K, S, P));
        batch_norm(p, &join(prefix, bn_name), &self.bn, y, post)
    }
}

impl<const I: usize, const O: usize, const K: usize, const S: usize, const P: usize, E, D> Lower
    for ConvBn<I, O, K, S, P, E, D>
where
    E: Dtype,
    D: Device<E>,
{
    fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act {
        self.lower_as(p, prefix, ("conv", "bn"), x, NONE)
    }
}

/// The (convolution, BatchNorm) names of `field` in a block's [`NAMES`](Basic::NAMES).
fn names(
    table: &[(&'static str, &'static str, &'static str)],
    field: &str,
) -> (&'static str, &'static str) {
    let &(_, conv, bn) = table
        .iter()
        .find(|n| n.0 == field)
        .unwrap_or_else(|| panic!("no field {field} in {table:?}"));
    (conv, bn)
}

/// Option A's shortcut: subsampled by `s`, channels zero-padded to `o`.
fn shortcut_a(p: &mut PlanBuilder, prefix: &str, x: Act, o: usize, s: usize) -> Act {
    let g = ConvGeom::new(p.batch(), (x.h, x.w, x.c), o, (1, s, 0));
    let y = p.act(&format!("{prefix} shortcut"), g.oh, g.ow, o);
    p.push(Op::ShortcutA {
        g,
        x: x.buf,
        y: y.buf,
        dx: grad(x.grad),
        dy: y.grad.expect("activation gradient"),
    });
    y
}

impl<const C: usize, E: Dtype, D: Device<E>> Lower for Basic<C, E, D> {
    fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act {
        let n = |f| names(Self::NAMES, f);
        let y = self.a.lower_as(p, prefix, n("a"), x, RELU);
        self.b.lower_as(p, prefix, n("b"), y, add_relu(x))
    }
}

impl<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>> Lower
    for BasicDown<I, O, S, E, D>
{
    fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act {
        let n = |f| names(Self::NAMES, f);
        let y = self.a.lower_as(p, prefix, n("a"), x, RELU);
        let shortcut = self.down.lower_as(p, prefix, n("down"), x, NONE);
        self.b.lower_as(p, prefix, n("b"), y, add_relu(shortcut))
    }
}

impl<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>> Lower
    for BasicA<I, O, S, E, D>
{
    fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act {
        let n = |f| names(Self::NAMES, f);
        let y = self.a.lower_as(p, prefix, n("a"), x, RELU);
        let shortcut = shortcut_a(p, prefix, x, O, S);
        self.b.lower_as(p, prefix, n("b"), y, add_relu(shortcut))
    }
}

impl<const C: usize, const M: usize, E: Dtype, D: Device<E>> Lower for Bottleneck<C, M, E, D> {
    fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act {
        let n = |f| names(Self::NAMES, f);
        let y = self.a.lower_as(p, prefix, n("a"), x, RELU);
        let y = self.b.lower_as(p, prefix, n("b"), y, RELU);
        self.c.lower_as(p, prefix, n("c"), y, add_relu(x))
    }
}

/// The two projecting bottlenecks, which differ only in where their stride sits.
macro_rules! lower_bottleneck_down {
    ($($ty:ident),+) => {$(
        impl<const I: usize, const M: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>>
            Lower for $ty<I, M, O, S, E, D>
        {
            fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act {
                let n = |f| names(Self::NAMES, f);
                let y = self.a.lower_as(p, prefix, n("a"), x, RELU);
                let y = self.b.lower_as(p, prefix, n("b"), y, RELU);
                let shortcut = self.down.lower_as(p, prefix, n("down"), x, NONE);
                self.c.lower_as(p, prefix, n("c"), y, add_relu(shortcut))
            }
        }
    )+};
}
lower_bottleneck_down!(BottleneckDown, BottleneckDownV15);

impl<const I: usize, const O: usize, const S: usize, E: Dtype, D: Device<E>> Lower
    for PlainBasic<I, O, S, E, D>
{
    fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act {
        let n = |f| names(Self::NAMES, f);
        let y = self.a.lower_as(p, prefix, n("a"), x, RELU);
        self.b.lower_as(p, prefix, n("b"), y, RELU)
    }
}

impl<First: Lower, Rest: Lower, const R: usize, E: Dtype, D: Device<E>> Lower
    for Stage<First, Rest, R, E, D>
{
    fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act {
        let mut y = self.first.lower(p, &join(prefix, "0"), x);
        for (i, block) in self.rest.modules.iter().enumerate() {
            y = block.lower(p, &join(prefix, &(i + 1).to_string()), y);
        }
        y
    }
}

/// Global average pooling, then the classifier `fc`.
fn head<const C: usize, const N: usize, E: Dtype, D: Device<E>>(
    p: &mut PlanBuilder,
    prefix: &str,
    _fc: &Linear<C, N, E, D>,
    x: Act,
) -> Act {
    assert_eq!(x.c, C);
    let b = p.batch();
    let pooled = p.act(&join(prefix, "avgpool"), 1, 1, C);
    p.push(Op::AvgPool {
        b,
        hw: x.h * x.w,
        c: C,
        x: x.buf,
        y: pooled.buf,
        dx: grad(x.grad),
        dy: pooled.grad.expect("activation gradient"),
    });
    let path = join(prefix, "fc");
    let w = p.param(
        join(&path, "weight"),
        N * C,
        Layout::Transposed { rows: N, cols: C },
    );
    let bias = p.param(join(&path, "bias"), N, Layout::Same);
    let y = p.act("logits", 1, 1, N);
    p.push(Op::Linear {
        b,
        c: C,
        n: N,
        x: pooled.buf,
        y: y.buf,
        w,
        bias,
        dx: grad(pooled.grad),
        dy: y.grad.expect("activation gradient"),
    });
    y
}

impl<L1, L2, L3, L4, const C: usize, const N: usize, E, D> Lower
    for ResNet<L1, L2, L3, L4, Linear<C, N, E, D>, E, D>
where
    E: Dtype,
    D: Device<E>,
    L1: Lower,
    L2: Lower,
    L3: Lower,
    L4: Lower,
{
    fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act {
        let x = self.stem.lower_as(p, prefix, ("conv1", "bn1"), x, RELU);
        let g = ConvGeom::new(p.batch(), (x.h, x.w, x.c), x.c, (3, 2, 1));
        let (oh, ow) = (g.oh, g.ow);
        let y = p.act(&join(prefix, "maxpool"), oh, ow, x.c);
        let argmax = p.buf(join(prefix, "maxpool winners"), p.batch() * oh * ow * x.c);
        p.push(Op::MaxPool {
            g,
            x: x.buf,
            y: y.buf,
            dx: grad(x.grad),
            dy: y.grad.expect("activation gradient"),
            argmax,
            y_bf16: None,
        });
        let x = self.layer1.lower(p, &join(prefix, "layer1"), y);
        let x = self.layer2.lower(p, &join(prefix, "layer2"), x);
        let x = self.layer3.lower(p, &join(prefix, "layer3"), x);
        let x = self.layer4.lower(p, &join(prefix, "layer4"), x);
        head(p, prefix, &self.fc, x)
    }
}

impl<L1: Lower, L2: Lower, L3: Lower, const N: usize, E: Dtype, D: Device<E>> Lower
    for CifarNet<L1, L2, L3, N, E, D>
{
    fn lower(&self, p: &mut PlanBuilder, prefix: &str, x: Act) -> Act {
        let x = self.stem.lower_as(p, prefix, ("conv1", "bn1"), x, RELU);
        let x = self.layer1.lower(p, &join(prefix, "layer1"), x);
        let x = self.layer2.lower(p, &join(prefix, "layer2"), x);
        let x = self.layer3.lower(p, &join(prefix, "layer3"), x);
        head(p, prefix, &self.fc, x)
    }
}

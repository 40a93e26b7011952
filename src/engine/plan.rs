//! The static plan of one training step: its ops in forward order, every
//! buffer they touch with its place in one arena, and the parameters.
//!
//! A [`PlanBuilder`] is what the model's blocks lower themselves into
//! ([`crate::model::lower`]); [`PlanBuilder::finish`] fixes, for every
//! activation gradient, which backward op writes it first (it overwrites,
//! the later ones add), and places the buffers: each lives from its first to
//! its last use on the step's timeline (forward op `i` at time `i`, its
//! backward at `2n - 1 - i`) and two buffers share memory when their lives
//! do not overlap (first fit, largest first). Nothing here depends on the
//! backend: the CPU backend runs it ([`super::cpu`]).

use std::collections::HashMap;

/// A buffer of the arena.
pub type BufId = usize;
/// A parameter (trainable: weights, BatchNorm scale and bias).
pub type ParamId = usize;
/// A BatchNorm running statistic (not trained; saved in checkpoints).
pub type StateId = usize;

/// How a dfdx tensor is laid out in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// As in dfdx.
    Same,
    /// dfdx `[O, C, K, K]` stored as `[K, K, C, O]`: the convolution's
    /// `(K*K*C) x O` matrix, rows in im2col's tap order.
    ConvKkcO {
        /// Output channels.
        o: usize,
        /// Input channels.
        c: usize,
        /// Window side.
        k: usize,
    },
    /// dfdx's `Linear` weight `[N, C]` stored as `[C, N]`.
    Transposed {
        /// Rows in dfdx (`N`).
        rows: usize,
        /// Columns in dfdx (`C`).
        cols: usize,
    },
}

/// A named tensor of the model, placed in the engine's flat parameter or
/// state array.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    /// dfdx path (`layer1.0.conv1.weight`, `bn1.running_mean`).
    pub path: String,
    /// Offset in the flat array.
    pub offset: usize,
    /// Elements.
    pub len: usize,
    /// Layout in the engine.
    pub layout: Layout,
}

/// How a buffer's elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// 32-bit floats.
    F32,
    /// bf16 values in 16 bits (a bf16 step's activations kept for
    /// backward: [`Plan::with_16_bit_activations`]).
    Bf16,
}

/// One buffer of the arena.
#[derive(Debug, Clone)]
pub struct Buf {
    /// What it holds, for reports (`layer1.0.bn1 out`, `d layer1.0.conv1 in`).
    pub name: String,
    /// Elements.
    pub len: usize,
    /// How they are stored.
    pub elem: Elem,
    /// Offset in the arena, set by [`PlanBuilder::finish`].
    pub offset: usize,
    /// First and last time it is used.
    pub life: (usize, usize),
}

impl Buf {
    /// The arena's floats (4 bytes each) it takes.
    pub fn floats(&self) -> usize {
        match self.elem {
            Elem::F32 => self.len,
            Elem::Bf16 => self.len.div_ceil(2),
        }
    }
}

/// An activation: its buffer, shape `(batch, h, w, c)` (NHWC) and its
/// gradient's buffer, if one is needed.
#[derive(Debug, Clone, Copy)]
pub struct Act {
    /// The values.
    pub buf: BufId,
    /// The gradient (None: the network's input).
    pub grad: Option<BufId>,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

/// Where an op's input gradient goes: overwritten by the first backward op
/// that reaches it, added to by the others.
#[derive(Debug, Clone, Copy)]
pub struct GradOut {
    /// The gradient buffer.
    pub buf: BufId,
    /// Add to it (false: overwrite).
    pub accumulate: bool,
}

/// A convolution's geometry (NHWC input `b x h x w x c`, `o` outputs,
/// `k x k` window, stride `s`, padding `p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    /// Batch.
    pub b: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub o: usize,
    /// Window side.
    pub k: usize,
    /// Stride.
    pub s: usize,
    /// Padding.
    pub p: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl ConvGeom {
    /// The window `k x k`, stride `s`, padding `p` over `batch` inputs of
    /// `h x w x c`, giving `o` channels.
    pub fn new(
        batch: usize,
        (h, w, c): (usize, usize, usize),
        o: usize,
        (k, s, p): (usize, usize, usize),
    ) -> Self {
        let out = |n: usize| (n + 2 * p - k) / s + 1;
        ConvGeom {
            b: batch,
            h,
            w,
            c,
            o,
            k,
            s,
            p,
            oh: out(h),
            ow: out(w),
        }
    }
    /// Whether the input itself is the im2col matrix (1x1, stride 1).
    pub fn is_pointwise(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }
    /// The one tap of the window that ever touches the input, when there
    /// is only one: tap 0 of a pointwise conv, and the centre tap `(p, p)`
    /// of a padded window over a 1x1 map (ResNet-18's last stage at 32x32,
    /// where the other 8 taps of a 3x3 window read only padding). Such a
    /// conv is the product of the input itself with that tap's `c x o`
    /// block of the weight: no columns, a ninth of the work.
    pub fn single_tap(&self) -> Option<usize> {
        if self.is_pointwise() {
            return Some(0);
        }
        let one_pixel = self.h == 1 && self.w == 1 && self.oh == 1 && self.ow == 1;
        (one_pixel && self.p < self.k).then_some(self.p * self.k + self.p)
    }
    /// Depth of the forward product: `c` for a [`ConvGeom::single_tap`]
    /// conv, the im2col columns otherwise.
    pub fn depth(&self) -> usize {
        match self.single_tap() {
            Some(_) => self.c,
            None => self.cols(),
        }
    }
    /// Rows of the im2col matrix (output positions).
    pub fn rows(&self) -> usize {
        self.b * self.oh * self.ow
    }
    /// Columns of the im2col matrix (`k*k*c`).
    pub fn cols(&self) -> usize {
        self.k * self.k * self.c
    }
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> usize {
        self.rows() * self.cols() * self.o
    }

    /// Whether the conv runs by image groups: each of [`ConvGeom::groups`]
    /// fixed groups of images lowers tiles of [`ConvGeom::tile_rows`] rows
    /// into its own cache-sized columns and multiplies them there (the
    /// weight gradient summed per group, then over the groups in order).
    /// For windows with a small weight (narrow layers, where one product
    /// over the whole batch's columns is bound by their memory traffic);
    /// wide layers take one product over all rows, split by gemm.
    pub fn grouped(&self) -> bool {
        self.single_tap().is_none() && self.cols() * self.o <= 1 << 16
    }

    /// Images in each group of a grouped conv (the last may have fewer):
    /// the batch in at most 16 groups, fixed by the batch alone, never by
    /// the threads.
    pub fn images_per_group(&self) -> usize {
        self.b.div_ceil(self.b.clamp(1, 16))
    }

    /// Groups of images of a grouped conv, none of them empty.
    pub fn groups(&self) -> usize {
        self.b.div_ceil(self.images_per_group().max(1))
    }

    /// Rows per tile of a grouped conv: columns of about 1 MiB, at most one image.
    pub fn tile_rows(&self) -> usize {
        ((1 << 18) / self.cols()).clamp(1, self.oh * self.ow)
    }

    /// Floats of a grouped conv's scratch: the columns of each group, then
    /// (backward) each group's weight gradient and one flipped weight for
    /// [`ConvGeom::input_gradient_conv`], then room for the weight packed
    /// in bf16 pairs ([`ConvGeom::packed_pairs`]).
    pub fn group_scratch(&self, backward: bool) -> usize {
        let b = backward as usize;
        self.groups() * (self.tile_rows() * self.cols() + b * self.cols() * self.o)
            + b * self.cols() * self.o
            + self.packed_pairs()
    }

    /// bf16 pairs (one float each) of this conv's weight packed for the
    /// direct bf16 kernel, or of its input-gradient conv's flipped weight,
    /// whichever is more.
    pub fn packed_pairs(&self) -> usize {
        self.k * self.k * (self.c.div_ceil(2) * self.o).max(self.o.div_ceil(2) * self.c)
    }

    /// Floats of a wide (not grouped) conv's backward scratch: the columns
    /// of x, then in the same place those of `dy` for
    /// [`ConvGeom::input_gradient_conv`] (or the columns' gradient), and the
    /// flipped weight.
    pub fn wide_backward_scratch(&self) -> usize {
        let cols = self.rows() * self.cols();
        match self.input_gradient_conv() {
            Some(d) => cols.max(d.rows() * d.cols()) + self.cols() * self.o,
            None => cols,
        }
    }

    /// The conv whose forward is this conv's input gradient, where there
    /// is one: for stride 1, `dx` is `dy` convolved with the weight flipped
    /// in space and transposed in channels, padded by `k - 1 - p`. Its
    /// columns are `k*k*o` wide, so the product has the forward's depth
    /// instead of `o` (narrow layers: 16 instead of 144) and there is no
    /// scatter-add.
    pub fn input_gradient_conv(&self) -> Option<ConvGeom> {
        if self.s != 1 || self.p >= self.k {
            return None;
        }
        let d = ConvGeom::new(
            self.b,
            (self.oh, self.ow, self.o),
            self.c,
            (self.k, 1, self.k - 1 - self.p),
        );
        (d.oh == self.h && d.ow == self.w).then_some(d)
    }
}

/// One op of the plan. Inputs are read, outputs written whole.
#[derive(Debug, Clone)]
pub enum Op {
    /// Convolution without bias: `y = im2col(x) * W`.
    Conv {
        /// Geometry.
        g: ConvGeom,
        /// Input.
        x: BufId,
        /// Output `(b, oh, ow, o)`.
        y: BufId,
        /// Weight, `[k, k, c, o]`.
        w: ParamId,
        /// Input gradient (None for the network's input).
        dx: Option<GradOut>,
        /// Output gradient.
        dy: BufId,
        /// im2col scratch of the forward pass (None when pointwise, or
        /// where the backend reads the windows in place:
        /// [`Plan::with_conv_scratch`]).
        cols: Option<BufId>,
        /// im2col and column-gradient scratch of the backward pass (where
        /// the backend reads the windows in place, the flipped weight
        /// alone or the columns' gradient; of a single tap, not pointwise,
        /// whose input is read from `x_bf16`, that input widened to f32).
        bcols: Option<BufId>,
        /// `x` as its writer also stores it in 16 bits, which backward
        /// reads instead of `x` ([`Plan::with_16_bit_activations`]).
        x_bf16: Option<BufId>,
        /// The output rounded to bf16 and stored in 16 bits: its
        /// BatchNorm's `x_bf16`, which that BatchNorm reads instead of `y`
        /// ([`Plan::with_16_bit_activations`]). Where the product can round
        /// as it stores, `y` is not written at all.
        y_bf16: Option<BufId>,
        /// `dy` as its BatchNorm stores it in 16 bits (its `dx_bf16`), which
        /// backward reads instead of `dy` where the products run on a bf16
        /// kernel ([`Plan::with_16_bit_activations`]).
        dy_bf16: Option<BufId>,
    },
    /// Training-mode BatchNorm over `rows x c`, then `+ residual`, then ReLU
    /// (each optional); evaluation uses the running statistics.
    BatchNorm {
        /// Rows (`b*h*w`).
        rows: usize,
        /// Channels.
        c: usize,
        /// Input.
        x: BufId,
        /// Output.
        y: BufId,
        /// Scale (`gamma`).
        gamma: ParamId,
        /// Shift (`beta`).
        beta: ParamId,
        /// Running mean.
        mean: StateId,
        /// Running variance.
        var: StateId,
        /// Momentum of the running statistics.
        momentum: f64,
        /// Added to the variance.
        epsilon: f64,
        /// Added after normalising, with where its gradient goes.
        residual: Option<(BufId, Option<GradOut>)>,
        /// ReLU at the end.
        relu: bool,
        /// Input gradient.
        dx: Option<GradOut>,
        /// Output gradient.
        dy: BufId,
        /// The batch's mean and 1/std per channel (`2c`), kept for backward.
        saved: BufId,
        /// The input rounded to bf16 and stored in 16 bits by the
        /// convolution that writes it (its `y_bf16`); forward normalises it
        /// and backward reads it, instead of `x` (which then lives only
        /// until forward, if it is written at all)
        /// ([`Plan::with_16_bit_activations`]).
        x_bf16: Option<BufId>,
        /// The output also stored in 16 bits by forward, for its readers in
        /// backward (this op's ReLU, the convolution that reads it).
        y_bf16: Option<BufId>,
        /// `dx` (a convolution's output gradient) stored in 16 bits instead
        /// of `dx`, where the products run on a bf16 kernel (its
        /// convolution's `dy_bf16`).
        dx_bf16: Option<BufId>,
        /// The residual's 16-bit copy (its writer's `y_bf16`), which
        /// forward reads instead of the residual.
        residual_bf16: Option<BufId>,
    },
    /// Max pooling, `k x k` window, stride `s`, padding `p` (padding never wins).
    MaxPool {
        /// Input geometry (`o = c`).
        g: ConvGeom,
        /// Input.
        x: BufId,
        /// Output.
        y: BufId,
        /// Input gradient.
        dx: Option<GradOut>,
        /// Output gradient.
        dy: BufId,
        /// Index of each output's winner in the input (`u32` bits).
        argmax: BufId,
        /// The output also stored in 16 bits, for the convolution that
        /// reads it in backward.
        y_bf16: Option<BufId>,
    },
    /// Option A shortcut: `x[:, ::s, ::s, :]`, channels zero-padded to `o`.
    ShortcutA {
        /// Geometry (`k = 1, p = 0`).
        g: ConvGeom,
        /// Input.
        x: BufId,
        /// Output.
        y: BufId,
        /// Input gradient.
        dx: Option<GradOut>,
        /// Output gradient.
        dy: BufId,
    },
    /// Global average pooling `(b, h, w, c)` → `(b, c)`.
    AvgPool {
        /// Batch.
        b: usize,
        /// `h*w`.
        hw: usize,
        /// Channels.
        c: usize,
        /// Input.
        x: BufId,
        /// Output.
        y: BufId,
        /// Input gradient.
        dx: Option<GradOut>,
        /// Output gradient.
        dy: BufId,
    },
    /// Fully connected: `y = x W + bias`, `(b, c)` → `(b, n)`.
    Linear {
        /// Batch.
        b: usize,
        /// Inputs.
        c: usize,
        /// Outputs.
        n: usize,
        /// Input.
        x: BufId,
        /// Output.
        y: BufId,
        /// Weight `[c, n]`.
        w: ParamId,
        /// Bias.
        bias: ParamId,
        /// Input gradient.
        dx: Option<GradOut>,
        /// Output gradient.
        dy: BufId,
    },
}

impl Op {
    /// The parameters whose gradients the op's backward writes.
    pub fn params(&self) -> Vec<ParamId> {
        match self {
            Op::Conv { w, .. } => vec![*w],
            Op::BatchNorm { gamma, beta, .. } => vec![*gamma, *beta],
            Op::Linear { w, bias, .. } => vec![*w, *bias],
            Op::MaxPool { .. } | Op::ShortcutA { .. } | Op::AvgPool { .. } => Vec::new(),
        }
    }

    /// The op's kind, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv { g, .. } if g.is_pointwise() => "conv 1x1",
            Op::Conv { g, .. } if g.k == 1 => "conv 1x1/2",
            Op::Conv { g, .. } if g.single_tap().is_some() => "conv kxk on 1x1",
            Op::Conv { .. } => "conv kxk",
            Op::BatchNorm { .. } => "batchnorm",
            Op::MaxPool { .. } => "max pool",
            Op::ShortcutA { .. } => "shortcut A",
            Op::AvgPool { .. } => "avg pool",
            Op::Linear { .. } => "linear",
        }
    }

    /// (buffers used in forward, buffers used in backward).
    pub(crate) fn uses(&self) -> (Vec<BufId>, Vec<BufId>) {
        let d = |g: &Option<GradOut>| g.map(|g| g.buf);
        match self {
            Op::Conv {
                x,
                y,
                dx,
                dy,
                cols,
                bcols,
                x_bf16,
                y_bf16,
                dy_bf16,
                ..
            } => (
                [Some(*x), Some(*y), *cols, *y_bf16, *x_bf16]
                    .into_iter()
                    .flatten()
                    .collect(),
                [
                    Some(x_bf16.unwrap_or(*x)),
                    d(dx),
                    Some(*dy),
                    *bcols,
                    *dy_bf16,
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            Op::BatchNorm {
                x,
                y,
                residual,
                relu,
                dx,
                dy,
                saved,
                x_bf16,
                y_bf16,
                dx_bf16,
                residual_bf16,
                ..
            } => {
                let r = residual.map(|r| r.0);
                let dr = residual.and_then(|r| d(&r.1));
                (
                    [
                        Some(*x),
                        Some(*y),
                        r,
                        Some(*saved),
                        *x_bf16,
                        *y_bf16,
                        *residual_bf16,
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                    [
                        Some(x_bf16.unwrap_or(*x)),
                        relu.then_some(y_bf16.unwrap_or(*y)),
                        d(dx),
                        *dx_bf16,
                        Some(*dy),
                        dr,
                        Some(*saved),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                )
            }
            Op::MaxPool {
                x,
                y,
                dx,
                dy,
                argmax,
                y_bf16,
                ..
            } => (
                [Some(*x), Some(*y), Some(*argmax), *y_bf16]
                    .into_iter()
                    .flatten()
                    .collect(),
                [d(dx), Some(*dy), Some(*argmax)]
                    .into_iter()
                    .flatten()
                    .collect(),
            ),
            Op::ShortcutA { x, y, dx, dy, .. } | Op::AvgPool { x, y, dx, dy, .. } => (
                vec![*x, *y],
                [d(dx), Some(*dy)].into_iter().flatten().collect(),
            ),
            Op::Linear { x, y, dx, dy, .. } => (
                vec![*x, *y],
                [Some(*x), d(dx), Some(*dy)].into_iter().flatten().collect(),
            ),
        }
    }

    fn grad_outs(&mut self) -> Vec<&mut GradOut> {
        let mut v = Vec::new();
        match self {
            Op::BatchNorm { dx, residual, .. } => {
                v.extend(dx.as_mut());
                if let Some((_, Some(dr))) = residual {
                    v.push(dr);
                }
            }
            Op::Conv { dx, .. }
            | Op::MaxPool { dx, .. }
            | Op::ShortcutA { dx, .. }
            | Op::AvgPool { dx, .. }
            | Op::Linear { dx, .. } => v.extend(dx.as_mut()),
        }
        v
    }
}

/// The finished plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Batch.
    pub batch: usize,
    /// Input `(h, w)`.
    pub input: (usize, usize),
    /// Classes (the logits' width).
    pub classes: usize,
    /// Ops in forward order.
    pub ops: Vec<Op>,
    /// Every buffer, placed.
    pub bufs: Vec<Buf>,
    /// Elements of the arena.
    pub arena_len: usize,
    /// Trainable tensors in the flat parameter array.
    pub params: Vec<TensorSpec>,
    /// Elements of the flat parameter array.
    pub params_len: usize,
    /// BatchNorm running statistics in the flat state array.
    pub states: Vec<TensorSpec>,
    /// Elements of the flat state array.
    pub states_len: usize,
    /// The input buffer (`batch x h x w x 3`).
    pub x: BufId,
    /// The logits buffer (`batch x classes`).
    pub logits: BufId,
    /// The logits' gradient.
    pub dlogits: BufId,
}

impl Plan {
    /// Bytes of the arena (activations, their gradients, scratch).
    pub fn arena_bytes(&self) -> usize {
        self.arena_len * 4
    }

    /// Whether most of the convolutions' arithmetic is in small ones,
    /// those computed image group by image group ([`ConvGeom::grouped`]):
    /// the CIFAR nets'. On AVX512-BF16 with its direct `VDPBF16PS` kernels
    /// switched off (`RESNET_DIRECT_BF16=0`), the CPU engine computes such
    /// a net's bf16 step on its direct fp32 kernels, faster there than as
    /// small bf16 products.
    pub fn mostly_small_convs(&self) -> bool {
        let (mut small, mut all) = (0.0, 0.0);
        for op in &self.ops {
            if let Op::Conv { g, .. } = op {
                let flops = (g.rows() * g.cols() * g.o) as f64;
                all += flops;
                if g.grouped() {
                    small += flops;
                }
            }
        }
        small > all / 2.0
    }

    /// Whether some buffer is stored in 16 bits.
    pub fn has_16_bit_buffers(&self) -> bool {
        self.bufs.iter().any(|b| b.elem == Elem::Bf16)
    }
    /// Floating-point operations of one training step: each convolution and
    /// the classifier forward, their weight gradient and (where the input
    /// has one) their input gradient, two per multiply-add.
    pub fn flops_per_step(&self) -> f64 {
        self.ops
            .iter()
            .map(|op| {
                let (macs, dx) = match op {
                    Op::Conv { g, dx, .. } => (g.macs(), dx.is_some()),
                    Op::Linear { b, c, n, dx, .. } => (b * c * n, dx.is_some()),
                    _ => return 0.0,
                };
                2.0 * macs as f64 * if dx { 3.0 } else { 2.0 }
            })
            .sum()
    }

    /// Bytes the arena would take with no buffer sharing memory.
    pub fn unshared_bytes(&self) -> usize {
        self.bufs.iter().map(|b| b.floats() * 4).sum()
    }
}

/// What the blocks lower themselves into.
#[derive(Debug)]
pub struct PlanBuilder {
    batch: usize,
    input: (usize, usize),
    ops: Vec<Op>,
    bufs: Vec<Buf>,
    params: Vec<TensorSpec>,
    params_len: usize,
    states: Vec<TensorSpec>,
    states_len: usize,
    x: BufId,
}

impl PlanBuilder {
    /// A plan for `batch` NHWC images of `h x w x 3`; returns it and the input.
    pub fn new(batch: usize, (h, w): (usize, usize)) -> (Self, Act) {
        let mut p = PlanBuilder {
            batch,
            input: (h, w),
            ops: Vec::new(),
            bufs: Vec::new(),
            params: Vec::new(),
            params_len: 0,
            states: Vec::new(),
            states_len: 0,
            x: 0,
        };
        let x = p.buf("input", batch * h * w * 3);
        p.x = x;
        let act = Act {
            buf: x,
            grad: None,
            h,
            w,
            c: 3,
        };
        (p, act)
    }

    /// Batch of the plan.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// A new buffer of `len` floats.
    pub fn buf(&mut self, name: impl Into<String>, len: usize) -> BufId {
        push_buf(&mut self.bufs, name.into(), len, Elem::F32)
    }

    /// A new activation `(batch, h, w, c)` with its gradient.
    pub fn act(&mut self, name: &str, h: usize, w: usize, c: usize) -> Act {
        let len = self.batch * h * w * c;
        let buf = self.buf(name, len);
        let grad = Some(self.buf(format!("d {name}"), len));
        Act { buf, grad, h, w, c }
    }

    /// Registers a trainable tensor by its dfdx path.
    pub fn param(&mut self, path: String, len: usize, layout: Layout) -> ParamId {
        self.params.push(TensorSpec {
            path,
            offset: self.params_len,
            len,
            layout,
        });
        self.params_len += len;
        self.params.len() - 1
    }

    /// Registers a running statistic by its dfdx path.
    pub fn state(&mut self, path: String, len: usize) -> StateId {
        self.states.push(TensorSpec {
            path,
            offset: self.states_len,
            len,
            layout: Layout::Same,
        });
        self.states_len += len;
        self.states.len() - 1
    }

    /// Appends an op.
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Fixes the gradient writes and places every buffer (see the module docs).
    ///
    /// # Panics
    /// If `logits` is not `(batch, classes)` or an op writes a buffer it reads.
    pub fn finish(mut self, logits: Act, classes: usize) -> Plan {
        assert_eq!((logits.h, logits.w, logits.c), (1, 1, classes));
        let dlogits = logits.grad.expect("logits have a gradient");
        // Backward in reverse: the first op to reach a gradient overwrites it.
        let mut written = std::collections::HashSet::new();
        written.insert(dlogits);
        for op in self.ops.iter_mut().rev() {
            for g in op.grad_outs() {
                g.accumulate = !written.insert(g.buf);
            }
        }
        let arena_len = lay_out(&self.ops, &mut self.bufs, (self.x, logits.buf, dlogits));
        Plan {
            batch: self.batch,
            input: self.input,
            classes,
            ops: self.ops,
            bufs: self.bufs,
            arena_len,
            params: self.params,
            params_len: self.params_len,
            states: self.states,
            states_len: self.states_len,
            x: self.x,
            logits: logits.buf,
            dlogits,
        }
    }
}

/// Alignment of every buffer, in floats (64 bytes).
/// Sets every buffer's life on the step's timeline and places it in the
/// arena; returns the arena's length. The input and the logits live
/// through the step, the logits' gradient from the loss to the first
/// backward op; a buffer no op uses gets no place.
fn lay_out(ops: &[Op], bufs: &mut [Buf], (x, logits, dlogits): (BufId, BufId, BufId)) -> usize {
    for b in bufs.iter_mut() {
        b.life = (usize::MAX, 0);
        b.offset = 0;
    }
    let n = ops.len();
    let touch = |bufs: &mut [Buf], b: BufId, t: usize| {
        let l = &mut bufs[b].life;
        *l = (l.0.min(t), l.1.max(t));
    };
    for (i, op) in ops.iter().enumerate() {
        let (f, b) = op.uses();
        for id in f {
            touch(bufs, id, i);
        }
        for id in b {
            touch(bufs, id, 2 * n - 1 - i);
        }
    }
    touch(bufs, x, 0);
    touch(bufs, x, 2 * n);
    // The logits are read after the step.
    touch(bufs, logits, 2 * n);
    touch(bufs, dlogits, n);
    place(bufs)
}

impl Plan {
    /// The same plan without the CPU backend's convolution scratch (im2col
    /// columns, group buffers), its buffers placed anew: what a backend
    /// with its own convolutions (cuDNN) needs.
    pub fn without_scratch(&self) -> Plan {
        self.with_conv_scratch(|_, _, _| (0, 0))
    }

    /// The same plan with each convolution's scratch resized by `f(g,
    /// has_dx, (cols, bcols))`, which gets the geometry, whether the
    /// input's gradient is wanted and the lengths the plan has (0: none),
    /// and gives the new ones (0: none; never longer), its buffers placed
    /// anew: what a backend needs that makes fewer columns than the CPU's
    /// fp32 kernels.
    pub fn with_conv_scratch(
        &self,
        f: impl Fn(&ConvGeom, bool, (usize, usize)) -> (usize, usize),
    ) -> Plan {
        let mut p = self.clone();
        for op in &mut p.ops {
            if let Op::Conv {
                g, dx, cols, bcols, ..
            } = op
            {
                let len = |b: Option<BufId>| b.map_or(0, |b| p.bufs[b].len);
                let had = (len(*cols), len(*bcols));
                let new = f(g, dx.is_some(), had);
                for (buf, had, new) in [(cols, had.0, new.0), (bcols, had.1, new.1)] {
                    assert!(new <= had, "scratch grows: {new} > {had}");
                    match *buf {
                        Some(id) if new > 0 => p.bufs[id].len = new,
                        _ => *buf = None,
                    }
                }
            }
        }
        p.arena_len = lay_out(&p.ops, &mut p.bufs, (p.x, p.logits, p.dlogits));
        p
    }
}

/// Which activations a bf16 step keeps for backward in 16 bits
/// ([`Plan::with_16_bit_activations`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored16 {
    /// Each BatchNorm's input (its convolution's output), rounded to bf16
    /// by the convolution (as it stores it, where its product can), and
    /// the rounded values normalised, as PyTorch's autocast stores a
    /// convolution's output in bf16. The f32 output then lives only from
    /// the convolution to its BatchNorm, if it is written at all.
    pub bn_inputs: bool,
    /// The outputs backward reads (a BatchNorm's, for its ReLU and the
    /// convolution that reads it; a max pool's): already bf16 values in a
    /// bf16 step, so the same bits in half the memory. The f32 output
    /// then lives only until its last reader in forward.
    pub outputs: bool,
    /// Each convolution's output gradient, which its BatchNorm writes
    /// rounded to bf16 (as PyTorch's autocast keeps the gradient of a bf16
    /// tensor in bf16): the same bits in half the memory, read by the
    /// convolution's backward where its products run on a bf16 kernel
    /// (the fp32 kernels read the f32 copy, which is then written instead).
    /// Not of the small convolutions on the direct kernels (`grouped`).
    pub gradients: bool,
}

impl Stored16 {
    /// Everything in 32 bits.
    pub const NONE: Stored16 = Stored16 {
        bn_inputs: false,
        outputs: false,
        gradients: false,
    };
    /// Both.
    pub const ALL: Stored16 = Stored16 {
        bn_inputs: true,
        outputs: true,
        gradients: true,
    };
}

impl Plan {
    /// The same plan keeping `which` activations for backward in 16 bits
    /// (for a bf16 step, whose BatchNorm outputs are bf16 values), its
    /// buffers placed anew: in a training step the saved activations are
    /// what fills the arena, and each of the two halves them.
    ///
    /// A BatchNorm's input is stored so only where a convolution writes it
    /// and the BatchNorm alone reads it; a single-tap convolution reading
    /// its input from 16 bits gets a backward scratch to widen it into
    /// (but a pointwise one, whose weight gradient reads the 16 bits
    /// where they lie). In
    /// evaluation too the BatchNorm normalises its rounded input (as
    /// autocast's does). A plan that already has 16-bit buffers is
    /// returned as it is.
    pub fn with_16_bit_activations(&self, which: Stored16) -> Plan {
        if self.has_16_bit_buffers() {
            return self.clone();
        }
        let mut p = self.clone();
        let forward_readers =
            |ops: &[Op], b: BufId| ops.iter().filter(|op| op.uses().0.contains(&b)).count();
        let add = |bufs: &mut Vec<Buf>, of: BufId| {
            let b = &bufs[of];
            push_buf(bufs, format!("{} bf16", b.name), b.len, Elem::Bf16)
        };
        if which.bn_inputs {
            let conv_outputs: Vec<BufId> = p
                .ops
                .iter()
                .filter_map(|op| match op {
                    Op::Conv { y, .. } => Some(*y),
                    _ => None,
                })
                .collect();
            for i in 0..p.ops.len() {
                if let Op::BatchNorm { x, .. } = p.ops[i]
                    && conv_outputs.contains(&x)
                    && forward_readers(&p.ops, x) == 2
                {
                    let copy = add(&mut p.bufs, x);
                    if let Op::BatchNorm { x_bf16, .. } = &mut p.ops[i] {
                        *x_bf16 = Some(copy);
                    }
                    for op in &mut p.ops {
                        if let Op::Conv { y, y_bf16, .. } = op
                            && *y == x
                        {
                            *y_bf16 = Some(copy);
                        }
                    }
                }
            }
        }
        if which.gradients {
            for i in 0..p.ops.len() {
                let Op::Conv { g, dy, .. } = p.ops[i] else {
                    continue;
                };
                let writer = p.ops.iter().position(|op| {
                    matches!(op, Op::BatchNorm { dx: Some(GradOut { buf, accumulate: false }), .. } if *buf == dy)
                });
                let Some(writer) = writer.filter(|_| !g.grouped()) else {
                    continue;
                };
                let copy = add(&mut p.bufs, dy);
                if let Op::BatchNorm { dx_bf16, .. } = &mut p.ops[writer] {
                    *dx_bf16 = Some(copy);
                }
                if let Op::Conv { dy_bf16, .. } = &mut p.ops[i] {
                    *dy_bf16 = Some(copy);
                }
            }
        }
        if which.outputs {
            // The copy of each output that backward reads, by the output.
            let mut copies: HashMap<BufId, BufId> = HashMap::new();
            let mut copy_of =
                |bufs: &mut Vec<Buf>, y: BufId| *copies.entry(y).or_insert_with(|| add(bufs, y));
            let written_by = |ops: &[Op], b: BufId| {
                ops.iter().position(|op| match op {
                    Op::BatchNorm { y, .. } | Op::MaxPool { y, .. } => *y == b,
                    _ => false,
                })
            };
            for i in 0..p.ops.len() {
                let (x, widens) = match &p.ops[i] {
                    // A pointwise conv reads its 16-bit input as a window
                    // of one tap; other single-tap convs widen it.
                    Op::Conv { x, g, .. } => (*x, g.single_tap().is_some() && !g.is_pointwise()),
                    Op::BatchNorm { y, relu: true, .. } => {
                        let copy = copy_of(&mut p.bufs, *y);
                        if let Op::BatchNorm { y_bf16, .. } = &mut p.ops[i] {
                            *y_bf16 = Some(copy);
                        }
                        continue;
                    }
                    _ => continue,
                };
                let Some(writer) = written_by(&p.ops, x) else {
                    continue;
                };
                let copy = copy_of(&mut p.bufs, x);
                if let Op::BatchNorm { y_bf16, .. } | Op::MaxPool { y_bf16, .. } =
                    &mut p.ops[writer]
                {
                    *y_bf16 = Some(copy);
                }
                let widened = widens.then(|| {
                    let (name, len) = (format!("{} widened", p.bufs[x].name), p.bufs[x].len);
                    push_buf(&mut p.bufs, name, len, Elem::F32)
                });
                if let Op::Conv { x_bf16, bcols, .. } = &mut p.ops[i] {
                    *x_bf16 = Some(copy);
                    if let Some(w) = widened {
                        assert!(bcols.is_none(), "a single-tap conv has no backward scratch");
                        *bcols = Some(w);
                    }
                }
            }
            // A residual read from its copy where there is one.
            for op in &mut p.ops {
                if let Op::BatchNorm {
                    residual: Some((r, _)),
                    residual_bf16,
                    ..
                } = op
                {
                    *residual_bf16 = copies.get(r).copied();
                }
            }
        }
        p.arena_len = lay_out(&p.ops, &mut p.bufs, (p.x, p.logits, p.dlogits));
        p
    }
}

/// Appends a buffer not yet placed; returns its id.
fn push_buf(bufs: &mut Vec<Buf>, name: String, len: usize, elem: Elem) -> BufId {
    bufs.push(Buf {
        name,
        len,
        elem,
        offset: 0,
        life: (usize::MAX, 0),
    });
    bufs.len() - 1
}

const ALIGN: usize = 16;

/// First-fit placement, largest first: each buffer takes the lowest offset
/// where it overlaps (in memory) no placed buffer whose life overlaps its
/// own. Returns the arena's length. Unused buffers take no space.
fn place(bufs: &mut [Buf]) -> usize {
    let mut order: Vec<usize> = (0..bufs.len())
        .filter(|&i| bufs[i].life.0 <= bufs[i].life.1)
        .collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(bufs[i].floats()), i));
    let mut placed: Vec<usize> = Vec::new();
    let mut end = 0;
    for i in order {
        let (len, life) = (bufs[i].floats().div_ceil(ALIGN) * ALIGN, bufs[i].life);
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .map(|&j| &bufs[j])
            .filter(|b| b.life.0 <= life.1 && life.0 <= b.life.1)
            .map(|b| (b.offset, b.offset + b.floats().div_ceil(ALIGN) * ALIGN))
            .collect();
        busy.sort_unstable();
        let mut at = 0;
        for (s, e) in busy {
            if at + len <= s {
                break;
            }
            at = at.max(e);
        }
        bufs[i].offset = at;
        end = end.max(at + len);
        placed.push(i);
    }
    end
}

/// Paths → specs, for reading a model's tensors into the engine.
pub fn by_path(specs: &[TensorSpec]) -> HashMap<&str, &TensorSpec> {
    specs.iter().map(|s| (s.path.as_str(), s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_window_over_one_pixel_or_a_pointwise_conv_has_a_single_tap() {
        let tap = |hw, (k, s, p)| ConvGeom::new(2, (hw, hw, 8), 8, (k, s, p)).single_tap();
        assert_eq!(tap(1, (3, 1, 1)), Some(4));
        assert_eq!(tap(1, (3, 2, 1)), Some(4));
        assert_eq!(tap(1, (5, 1, 2)), Some(12));
        assert_eq!(tap(7, (1, 1, 0)), Some(0));
        assert_eq!(tap(1, (1, 2, 0)), Some(0), "a strided 1x1 over one pixel");
        assert_eq!(tap(4, (1, 2, 0)), None, "strided 1x1: columns subsample");
        assert_eq!(tap(2, (3, 1, 1)), None);
        assert_eq!(tap(2, (3, 2, 1)), None, "2x2 to 1x1 reads 4 taps");
        let g = ConvGeom::new(2, (1, 1, 8), 16, (3, 1, 1));
        assert_eq!((g.depth(), g.cols(), g.grouped()), (8, 72, false));
    }

    #[test]
    fn buffers_share_memory_only_when_their_lives_do_not_overlap() {
        let mut bufs: Vec<Buf> = [(100, (0, 3)), (50, (4, 6)), (60, (2, 5)), (10, (7, 7))]
            .into_iter()
            .map(|(len, life)| Buf {
                name: String::new(),
                len,
                elem: Elem::F32,
                offset: 0,
                life,
            })
            .collect();
        let len = place(&mut bufs);
        for (i, a) in bufs.iter().enumerate() {
            for b in &bufs[i + 1..] {
                let live = a.life.0 <= b.life.1 && b.life.0 <= a.life.1;
                let mem = a.offset < b.offset + b.len && b.offset < a.offset + a.len;
                assert!(!(live && mem), "{a:?} {b:?}");
            }
        }
        // 100 and 60 live together; 50 and 10 fit in the 100's place later.
        assert_eq!(len, 112 + 64);
    }
}

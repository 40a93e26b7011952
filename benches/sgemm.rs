//! The engine's matrix product (`engine::cpu::sgemm`) beside the `gemm` crate
//! it replaced, and its bf16 product (`engine::cpu::bf16gemm`) on every
//! bf16 kernel this CPU runs (AMX, AVX512-BF16; none is skipped silently),
//! on the shapes a ResNet step multiplies, 2 threads: `cargo bench --bench
//! sgemm` (or `-- square` for one group). Throughput is in floating-point
//! operations (2 m n k per product). The `bf16pack` groups time the bf16
//! product's packing alone (any CPU), vectorised and one pair at a time;
//! the `bf16conv` groups a convolution's operands (forward and weight
//! gradient) made as columns and packed, against packed from its input in
//! place.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use resnet_imagenet::engine::cpu::bf16gemm::{self, Bf16Kernel};
use resnet_imagenet::engine::cpu::ops;
use resnet_imagenet::engine::cpu::sgemm::{self, Mat};
use resnet_imagenet::engine::cpu::values::Values;
use resnet_imagenet::engine::precision::round_bf16;
use std::time::Duration;

/// `(name, m, n, k, A transposed)`, C row-major `m x n`.
const SHAPES: &[(&str, usize, usize, usize, bool)] = &[
    ("square_1024", 1024, 1024, 1024, false),
    // ResNet-50, b8 at 224x224: a 1x1 conv's forward (rows x o x c),
    ("r50_1x1_fwd", 8 * 56 * 56, 256, 64, false),
    ("r50_1x1_fwd_deep", 8 * 14 * 14, 1024, 256, false),
    // its weight gradient (c x o x rows, A = columns transposed),
    ("r50_1x1_wgrad", 256, 64, 8 * 56 * 56, true),
    // and a 3x3 conv's input gradient by columns (rows x 9c x o).
    ("r50_3x3_dcols", 8 * 28 * 28, 9 * 128, 128, false),
    // CIFAR ResNet-20, b128: a stride-2 conv's input gradient by columns.
    ("r20_dcols", 128 * 16 * 16, 9 * 16, 32, false),
];

/// `v` rounded to bf16, as bit patterns.
fn to_16_bits(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| (round_bf16(x).to_bits() >> 16) as u16)
        .collect()
}

fn values(len: usize) -> Vec<f32> {
    (0..len).map(|i| (i % 17) as f32 * 0.01 - 0.08).collect()
}

fn products(c: &mut Criterion) {
    let threads = 2;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    pool.broadcast(|_| {
        sgemm::reserve();
        bf16gemm::reserve();
    });
    let bf16: Vec<Bf16Kernel> = [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16]
        .into_iter()
        .filter(|k| match k.why_not() {
            None => true,
            Some(why) => {
                eprintln!("bf16 {}: not measured: {why}", k.name());
                false
            }
        })
        .collect();
    for &(name, m, n, k, ta) in SHAPES {
        let (a, b) = (values(m * k), values(k * n));
        let mut dst = vec![0f32; m * n];
        let am: Mat = if ta {
            sgemm::transposed(&a, m)
        } else {
            sgemm::row_major(&a, k)
        };
        let bm = sgemm::row_major(&b, n);
        let mut g = c.benchmark_group(format!("sgemm/{name}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(BenchmarkId::new("ours", format!("{m}x{n}x{k}")), |bch| {
            bch.iter(|| pool.install(|| sgemm::matmul(&mut dst, false, am, bm, (m, n, k), threads)))
        });
        for &kernel in &bf16 {
            g.bench_function(
                BenchmarkId::new(kernel.name(), format!("{m}x{n}x{k}")),
                |bch| {
                    bch.iter(|| {
                        pool.install(|| {
                            bf16gemm::matmul(kernel, &mut dst, false, am, bm, (m, n, k), threads)
                        })
                    })
                },
            );
        }
        let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
        g.bench_function(BenchmarkId::new("gemm", format!("{m}x{n}x{k}")), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    // SAFETY: the strides describe a (m x k), b (k x n) and
                    // dst (m x n) inside their vectors.
                    unsafe {
                        gemm::gemm(
                            m,
                            n,
                            k,
                            dst.as_mut_ptr(),
                            1,
                            n as isize,
                            false,
                            a.as_ptr(),
                            a_cs,
                            a_rs,
                            b.as_ptr(),
                            1,
                            n as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::Rayon(threads),
                        )
                    }
                })
            })
        });
        g.finish();
        // The packing alone (operands rounded to bf16 pairs in each kernel's
        // layout, on the same blocks and threads, nothing multiplied): it
        // runs on any CPU, so it is measured everywhere, against packing
        // one pair at a time. Throughput: the product's FLOP, as above, so
        // that it reads against the products' rates.
        let mut g = c.benchmark_group(format!("bf16pack/{name}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements((2 * m * n * k) as u64));
        for kernel in [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16] {
            for (how, by_element) in [("vector", false), ("by-element", true)] {
                g.bench_function(
                    BenchmarkId::new(format!("{}-{how}", kernel.name()), format!("{m}x{n}x{k}")),
                    |bch| {
                        bch.iter(|| {
                            pool.install(|| {
                                bf16gemm::pack_only(
                                    kernel,
                                    bf16gemm::Lhs::Mat(am),
                                    bf16gemm::Rhs::F32(bm),
                                    (m, n, k),
                                    threads,
                                    by_element,
                                )
                            })
                        })
                    },
                );
            }
        }
        g.finish();
    }
}

/// A convolution's forward and weight-gradient operands on a bf16 kernel:
/// im2col columns made (fp32) and packed, against the windows packed from
/// the input where they lie; ResNet-50's 3x3 convolutions at b8, 224x224,
/// stages 1 and 3.
fn conv_operands(c: &mut Criterion) {
    use resnet_imagenet::engine::plan::ConvGeom;
    let threads = 2;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    pool.broadcast(|_| bf16gemm::reserve());
    for (name, side, ch) in [("r50_3x3_stage1", 56, 64), ("r50_3x3_stage3", 14, 256)] {
        let g = ConvGeom::new(8, (side, side, ch), ch, (3, 1, 1));
        let x = values(8 * side * side * ch);
        let w = values(g.cols() * g.o);
        let wm = sgemm::row_major(&w, g.o);
        let dy = values(g.rows() * g.o);
        // As the engine keeps a bf16 step's activations and gradients.
        let (x16, dy16) = (to_16_bits(&x), to_16_bits(&dy));
        let (x, dy) = (Values::F32(&x), Values::F32(&dy));
        let (x16, dy16) = (Values::Bf16(&x16), Values::Bf16(&dy16));
        let mut cols = vec![0f32; g.rows() * g.cols()];
        let mut grp = c.benchmark_group(format!("bf16conv/{name}"));
        grp.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements((2 * g.macs()) as u64));
        for kernel in [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16] {
            let shape = format!("{}x{}x{}", g.rows(), g.o, g.cols());
            grp.bench_function(
                BenchmarkId::new(format!("{}-im2col+pack", kernel.name()), &shape),
                |bch| {
                    bch.iter(|| {
                        pool.install(|| {
                            bf16gemm::pack_conv_only(kernel, x, &g, wm, Some(&mut cols), threads)
                        })
                    })
                },
            );
            grp.bench_function(
                BenchmarkId::new(format!("{}-pack-in-place", kernel.name()), &shape),
                |bch| {
                    bch.iter(|| {
                        pool.install(|| bf16gemm::pack_conv_only(kernel, x, &g, wm, None, threads))
                    })
                },
            );
            grp.bench_function(
                BenchmarkId::new(format!("{}-pack-in-place-16bit", kernel.name()), &shape),
                |bch| {
                    bch.iter(|| {
                        pool.install(|| {
                            bf16gemm::pack_conv_only(kernel, x16, &g, wm, None, threads)
                        })
                    })
                },
            );
            // The weight gradient's: the columns' transpose by the output's
            // gradient, in the engine's blocks of columns.
            let wshape = format!("{}x{}x{}", g.cols(), g.o, g.rows());
            grp.bench_function(
                BenchmarkId::new(format!("{}-wgrad-im2col+pack", kernel.name()), &wshape),
                |bch| {
                    bch.iter(|| {
                        pool.install(|| {
                            ops::pack_weight_gradient_only(kernel, x, &g, dy, Some(&mut cols))
                        })
                    })
                },
            );
            grp.bench_function(
                BenchmarkId::new(format!("{}-wgrad-pack-in-place", kernel.name()), &wshape),
                |bch| {
                    bch.iter(|| {
                        pool.install(|| ops::pack_weight_gradient_only(kernel, x, &g, dy, None))
                    })
                },
            );
            grp.bench_function(
                BenchmarkId::new(
                    format!("{}-wgrad-pack-in-place-16bit", kernel.name()),
                    &wshape,
                ),
                |bch| {
                    bch.iter(|| {
                        pool.install(|| ops::pack_weight_gradient_only(kernel, x16, &g, dy16, None))
                    })
                },
            );
        }
        grp.finish();
    }
}

criterion_group!(benches, products, conv_operands);
criterion_main!(benches);

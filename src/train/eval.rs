//! Evaluation: centre crop, ten-crop and the paper's fully-convolutional
//! multi-scale testing, over a loader or a checkpoint.

use super::TrainError;
use super::checkpoint;
use super::config::{EngineKind, TrainConfig};
use super::device::cpu_device;
use super::job::{EvalJob, eval_loader};
use super::metrics::{self, Accuracy};
use crate::augment::{CifarAugment, EvalCrop, normalize};
use crate::engine::Engine;
use crate::loader::Loader;
use crate::model::state;
use crate::model::zoo::{self, Family, Input, Network};
use crate::reader::Dataset;
use crate::sampler::Distributed;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Evaluates `model` over a loader's epoch: one row of logits per view,
/// probabilities averaged over the views of each record.
pub fn evaluate<M: Network<D>, D: Device<f32>>(
    model: &mut M,
    dev: &D,
    loader: &Loader,
) -> Result<Accuracy, TrainError> {
    evaluate_with(loader, M::CLASSES, |images, (n, h, w)| {
        let x: Input<D> = dev.tensor_from_vec(images.to_vec(), (n, h, w, Const::<3>));
        Ok(model.forward_eval(x).as_vec())
    })
}

/// [`evaluate`] with the planned engine (its plan's image size must be
/// the loader's).
pub fn evaluate_engine(
    engine: &mut crate::engine::Engine,
    loader: &Loader,
) -> Result<Accuracy, TrainError> {
    let classes = engine.plan().classes;
    evaluate_with(loader, classes, |images, (n, _, _)| {
        Ok(engine.eval_rows(images, n)?)
    })
}

/// The loop of [`evaluate`] over any forward: `logits(images, (n, h, w))`
/// gives `n x classes` logits of an NHWC batch.
pub fn evaluate_with(
    loader: &Loader,
    classes: usize,
    mut logits: impl FnMut(&[f32], (usize, usize, usize)) -> Result<Vec<f32>, TrainError>,
) -> Result<Accuracy, TrainError> {
    let mut acc = Accuracy::default();
    for batch in loader.epoch(0) {
        let batch = batch?;
        let [n, h, w, _] = batch.shape();
        let scores = logits(batch.images(), (n, h, w))?;
        let views = batch.views();
        let scores = if views == 1 {
            scores
        } else {
            metrics::average_views(&scores, classes, views)
        };
        acc.add(&scores, classes, batch.labels());
    }
    Ok(acc)
}

/// The paper's fully-convolutional multi-scale testing: each whole image
/// (no crop) at every shorter side in `scales`, and its mirror; softmax
/// scores averaged.
pub fn evaluate_multiscale<M: Network<D>, D: Device<f32>>(
    model: &mut M,
    dev: &D,
    loader: &Loader,
    scales: &[u32],
) -> Result<Accuracy, TrainError> {
    let mut acc = Accuracy::default();
    let n = loader.dataset().len();
    let norm = loader.whole_normalizer();
    for i in 0..n {
        let mut logits = Vec::new();
        let mut label = 0;
        for &s in scales {
            let (img, l) = loader.whole_image(i, s)?;
            label = l;
            let (h, w) = (img.height as usize, img.width as usize);
            // The mirror of the normalised image: the mean is resized once per scale.
            let plain = norm.hwc(&img.pixels, img.width, img.height, false);
            let mirrored = normalize::mirror_hwc(&plain, w, h);
            for hwc in [plain, mirrored] {
                let t: Input<D> = dev.tensor_from_vec(hwc, (1, h, w, Const::<3>));
                logits.extend(model.forward_eval(t).as_vec());
            }
        }
        let views = logits.len() / M::CLASSES;
        acc.add(
            &metrics::average_views(&logits, M::CLASSES, views),
            M::CLASSES,
            &[label],
        );
    }
    Ok(acc)
}

/// The standard single-crop test of a config: shorter side `eval_resize`, centre `crop`.
pub(super) fn center_crop(cfg: &TrainConfig) -> EvalCrop {
    EvalCrop::Center {
        resize: cfg.eval_resize,
        crop: cfg.crop,
    }
}

/// The ten-crop test's loader: shorter side `eval_resize`, ten crops of
/// the crop size, over `share` of the validation split.
pub(super) fn ten_crop_loader(
    cfg: &TrainConfig,
    val: &Arc<Dataset>,
    share: Distributed,
) -> Result<Loader, TrainError> {
    eval_loader(
        cfg,
        Arc::clone(val),
        EvalCrop::TenCrop {
            resize: cfg.eval_resize,
            crop: cfg.crop,
        },
        share,
    )
}

/// Ten-crop (`ten_loader`, [`ten_crop_loader`]), then multi-scale at
/// `scales` (through `center_loader`'s normalisation and records): the
/// end-of-run tests of ImageNet models, on the records the loaders hold
/// (a rank's share: the caller sums the counts). With an `engine`
/// (planned at the crop size, holding `model`'s weights) the ten crops run
/// on it; the multi-scale test, one whole image of its own size at a time,
/// runs on `model`.
pub(super) fn ten_crop_and_multiscale<M: Network<D>, D: Device<f32>>(
    model: &mut M,
    engine: Option<&mut crate::engine::Engine>,
    dev: &D,
    ten_loader: &Loader,
    center_loader: &Loader,
    scales: &[u32],
) -> Result<(Accuracy, Accuracy), TrainError> {
    let ten = match engine {
        Some(e) => evaluate_engine(e, ten_loader)?,
        None => evaluate(model, dev, ten_loader)?,
    };
    let ms = evaluate_multiscale(model, dev, center_loader, scales)?;
    Ok((ten, ms))
}

/// The paper's test scales {224, 256, 384, 480, 640}, scaled to a crop size.
pub fn paper_scales(crop: u32) -> Vec<u32> {
    [224u32, 256, 384, 480, 640]
        .iter()
        .map(|s| (s * crop).div_ceil(224))
        .collect()
}

/// Results of evaluating a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Centre-crop top-1 / top-5 error and loss.
    pub center: Accuracy,
    /// Ten-crop (ImageNet models: from the evaluation resize; CIFAR
    /// models: [`EvalCrop::PaddedTenCrop`], the training's padding).
    pub ten_crop: Option<Accuracy>,
    /// Fully-convolutional multi-scale (ImageNet models).
    pub multiscale: Option<Accuracy>,
    /// Scales used for multi-scale.
    pub scales: Vec<u32>,
}

/// Evaluates a checkpoint on the CPU with the model type its name picks from the zoo.
pub fn evaluate_checkpoint(job: EvalJob) -> Result<EvalReport, TrainError> {
    struct With(EvalJob);
    impl zoo::NetworkUser<Cpu> for With {
        type Output = Result<EvalReport, TrainError>;
        fn run<M: Network<Cpu>>(self) -> Self::Output {
            evaluate_job::<M>(self.0)
        }
    }
    let (model, classes) = (job.model().to_string(), job.classes());
    zoo::with_network(&model, classes, With(job))?
}

/// Evaluates a checkpoint with model type `M` on the CPU: centre crop,
/// ten-crop, and for ImageNet models multi-scale.
pub fn evaluate_job<M: Network<Cpu>>(job: EvalJob) -> Result<EvalReport, TrainError> {
    let dev = cpu_device(job.cfg.seed);
    let mut model = M::build(&dev);
    state::load_safetensors(&mut model, &job.dir.join(checkpoint::MODEL_FILE)).map_err(
        |source| TrainError::Checkpoint {
            path: job.dir.clone(),
            source,
        },
    )?;
    let (cfg, val) = (&job.cfg, &job.val);
    // The crops of the crop size run on the engine when the run trained on
    // it (the same numbers as dfdx's, tests/engine.rs, several times
    // faster); the multi-scale test's whole images stay on dfdx.
    let mut engine = match cfg.engine {
        EngineKind::Engine => {
            let side = cfg.crop as usize;
            // In the precision it trained in.
            Some(Engine::build(
                &model,
                cfg.batch_size,
                (side, side),
                crate::engine::Target::Cpu { threads: 0 },
                cfg.precision,
            )?)
        }
        EngineKind::Dfdx => None,
    };
    let mut crops = |model: &mut M, loader: &Loader| match engine.as_mut() {
        Some(e) => evaluate_engine(e, loader),
        None => evaluate(model, &dev, loader),
    };
    let center_loader = eval_loader(
        cfg,
        Arc::clone(val),
        center_crop(cfg),
        Distributed::default(),
    )?;
    let center = crops(&mut model, &center_loader)?;
    let imagenet = zoo::family(&cfg.model) == Some(Family::ImageNet);
    let (ten_crop, multiscale) = if !imagenet {
        // CIFAR nets: the centre and corner crops of the image padded as
        // in training (pad 4, the default CifarAugment), and their mirrors;
        // no multi-scale test.
        let crop = EvalCrop::PaddedTenCrop {
            pad: CifarAugment::default().pad,
            crop: cfg.crop,
        };
        let ten = crops(
            &mut model,
            &eval_loader(cfg, Arc::clone(val), crop, Distributed::default())?,
        )?;
        (Some(ten), None)
    } else {
        let ten_loader = ten_crop_loader(cfg, val, Distributed::default())?;
        let (ten, ms) = ten_crop_and_multiscale(
            &mut model,
            engine.as_mut(),
            &dev,
            &ten_loader,
            &center_loader,
            &job.scales,
        )?;
        (Some(ten), Some(ms))
    };
    Ok(EvalReport {
        center,
        ten_crop,
        multiscale,
        scales: job.scales,
    })
}

/// One line per test: `centre crop  top-1 error 8.3%  top-5 error 0.0%  loss 0.3012  (12 images)`.
impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = |f: &mut std::fmt::Formatter<'_>, name: &str, a: &Accuracy| {
            writeln!(
                f,
                "{name:<12} top-1 error {:.1}%  top-5 error {:.1}%  loss {:.4}  ({} images)",
                100.0 * a.top1_error(),
                100.0 * a.top5_error(),
                a.loss(),
                a.n
            )
        };
        line(f, "centre crop", &self.center)?;
        if let Some(t) = &self.ten_crop {
            line(f, "ten-crop", t)?;
        }
        if let Some(m) = &self.multiscale {
            line(f, &format!("scales {:?}", self.scales), m)?;
        }
        Ok(())
    }
}

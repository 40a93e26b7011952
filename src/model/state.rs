//! Model state as named tensors, with torchvision's names and layouts.
//!
//! dfdx names a tensor by its path through the module tree
//! (`layer1.rest.0.a.bn.scale`); torchvision's ResNet state_dict uses
//! `layer1.1.bn1.weight`. [`torchvision_name`] maps one to the other, so a
//! checkpoint written by [`save_safetensors`] loads into
//! `torchvision.models.resnet50()` with `load_state_dict` (strict), and a
//! torchvision state_dict saved as safetensors loads with
//! [`load_safetensors`]. Layouts already agree: convolution weights are
//! `[O, C, K, K]`, the classifier `[N, C]`.
//!
//! The same named view serves the optimizer's momentum (saved beside the
//! weights in a checkpoint) and the zero-init of each residual branch's last
//! BatchNorm scale.

use ::safetensors::tensor::{Dtype as SDtype, SafeTensors, TensorView};
use dfdx::nn::tensor_collection::{
    RecursiveWalker, ScalarOptions, TensorCollection, TensorOptions, TensorViewer, TensorVisitor,
    ViewTensorMut, ViewTensorName, ViewTensorRef,
};
use dfdx::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Errors reading or writing model state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a safetensors file, or a damaged one.
    #[error("{path}: not a valid safetensors file: {msg}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What the parser said.
        msg: String,
    },
    /// Tensors the model needs are not in the file.
    #[error("missing tensors: {}", .0.join(", "))]
    Missing(Vec<String>),
    /// Tensors in the file that the model does not have.
    #[error("unexpected tensors (a different architecture?): {}", .0.join(", "))]
    Unexpected(Vec<String>),
    /// A tensor with the wrong shape (e.g. another number of classes).
    #[error("{name}: shape {file:?} in the file, {model:?} in the model")]
    Shape {
        /// torchvision name.
        name: String,
        /// Shape found.
        file: Vec<usize>,
        /// Shape expected.
        model: Vec<usize>,
    },
    /// A tensor stored as something other than f32.
    #[error("{name}: dtype {dtype} (expected F32)")]
    Dtype {
        /// torchvision name.
        name: String,
        /// dtype found.
        dtype: String,
    },
}

/// One tensor of a model, by its dfdx path.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    /// dfdx path (`layer1.first.a.conv.weight`).
    pub path: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
    /// Whether SGD updates it (false for BatchNorm running statistics).
    pub trainable: bool,
}

/// Collects every tensor's values, or with gradients, every trainable
/// tensor's gradient.
struct Collect<'a, D: Device<f32>> {
    grads: Option<&'a Gradients<f32, D>>,
    out: Vec<NamedTensor>,
}

impl<D: Device<f32>> TensorVisitor<f32, D> for Collect<'_, D> {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = D::Err;
    type E2 = f32;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, f32, D>,
        (t, path): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, f32, D>>,
    ) -> Result<Option<Tensor<S, f32, D>>, Self::Err> {
        let trainable = opts.do_gradient_update;
        let data = match self.grads {
            None => t.as_vec(),
            Some(g) if trainable => g.get(t).as_vec(),
            Some(_) => return Ok(None),
        };
        self.out.push(NamedTensor {
            path,
            shape: t.shape().concrete().into_iter().collect(),
            data,
            trainable,
        });
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

fn collect<D: Device<f32>, M: TensorCollection<f32, D>>(
    model: &M,
    grads: Option<&Gradients<f32, D>>,
) -> Vec<NamedTensor> {
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    M::iter_tensors(&mut RecursiveWalker {
        m: (model, String::new()),
        f: &mut c,
    })
    .expect("reading tensors does not fail");
    c.out
}

/// Every tensor of `model` (parameters and BatchNorm statistics), in module order.
pub fn named_tensors<D: Device<f32>, M: TensorCollection<f32, D>>(model: &M) -> Vec<NamedTensor> {
    collect(model, None)
}

/// The gradient of every trainable tensor of `model` in `grads`, by dfdx
/// path, in module order (panics for a tensor the tape did not reach).
pub fn named_grads<D: Device<f32>, M: TensorCollection<f32, D>>(
    model: &M,
    grads: &Gradients<f32, D>,
) -> Vec<(String, Vec<f32>)> {
    collect(model, Some(grads))
        .into_iter()
        .map(|t| (t.path, t.data))
        .collect()
}

type Source<'a> = dyn FnMut(&str, &[usize]) -> Result<Option<Vec<f32>>, StateError> + 'a;

struct Assign<'a>(&'a mut Source<'a>);

impl<D: Device<f32>> TensorVisitor<f32, D> for Assign<'_> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = StateError;
    type E2 = f32;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, f32, D>,
        (t, path): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, f32, D>>,
    ) -> Result<Option<Tensor<S, f32, D>>, Self::Err> {
        let shape: Vec<usize> = t.shape().concrete().into_iter().collect();
        if let Some(v) = (self.0)(&path, &shape)? {
            assert_eq!(
                v.len(),
                t.shape().num_elements(),
                "{path}: source gave a wrong length"
            );
            t.copy_from(&v);
        }
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

/// Overwrites tensors of `model`: `source(path, shape)` returns the new values
/// (exactly `shape`'s element count) or `None` to keep a tensor.
pub fn assign_tensors<'a, D: Device<f32>, M: TensorCollection<f32, D>>(
    model: &mut M,
    source: &'a mut Source<'a>,
) -> Result<(), StateError> {
    M::iter_tensors(&mut RecursiveWalker {
        m: (model, String::new()),
        f: &mut Assign(source),
    })?;
    Ok(())
}

/// torchvision's name for a dfdx path of this crate's networks.
///
/// The blocks name their tensors as torchvision does (`layer2.0.downsample.0.weight`,
/// see [`super::blocks`]); only dfdx's BatchNorm calls its weight `scale`:
/// `bn1.scale` → `bn1.weight`.
pub fn torchvision_name(path: &str) -> String {
    match path.strip_suffix(".scale") {
        Some(layer) => format!("{layer}.weight"),
        None => path.to_string(),
    }
}

/// The model's state with torchvision's names (BatchNorms without
/// `num_batches_tracked`, which only [`save_safetensors`] adds).
pub fn state_dict<D: Device<f32>, M: TensorCollection<f32, D>>(
    model: &M,
) -> BTreeMap<String, NamedTensor> {
    named_tensors(model)
        .into_iter()
        .map(|t| (torchvision_name(&t.path), t))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes named f32 tensors (plus optional metadata) as safetensors, to a
/// temporary file renamed into place.
pub fn write_safetensors(
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    extra_i64: &[String],
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes: Vec<(String, Vec<usize>, SDtype, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (s, v))| (k.clone(), s.clone(), SDtype::F32, f32_bytes(v)))
        .chain(
            extra_i64
                .iter()
                .map(|k| (k.clone(), vec![], SDtype::I64, 0i64.to_le_bytes().to_vec())),
        )
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, s, d, b)| {
            (
                k.clone(),
                TensorView::new(*d, s.clone(), b).expect("sizes agree"),
            )
        })
        .collect();
    let data =
        ::safetensors::tensor::serialize(views, &metadata).map_err(|e| StateError::Format {
            path: path.to_owned(),
            msg: e.to_string(),
        })?;
    crate::files::write_file_atomic(path, &data).map_err(io)
}

/// A safetensors file read into memory: f32 tensors by name, and its metadata.
#[derive(Debug, Default)]
pub struct TensorFile {
    /// f32 tensors: name → (shape, values).
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Names of the tensors of other dtypes (torchvision's `num_batches_tracked`).
    pub other: BTreeMap<String, String>,
    /// The header's `__metadata__`.
    pub metadata: HashMap<String, String>,
}

/// Reads a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<TensorFile, StateError> {
    let buf = std::fs::read(path).map_err(|source| StateError::Io {
        path: path.to_owned(),
        source,
    })?;
    let fmt = |e: ::safetensors::SafeTensorError| StateError::Format {
        path: path.to_owned(),
        msg: format!("{e:?}"),
    };
    let (_, meta) = SafeTensors::read_metadata(&buf).map_err(fmt)?;
    let st = SafeTensors::deserialize(&buf).map_err(fmt)?;
    let mut out = TensorFile {
        metadata: meta.metadata().clone().unwrap_or_default(),
        ..Default::default()
    };
    for (name, view) in st.tensors() {
        if view.dtype() == SDtype::F32 {
            let v = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            out.tensors.insert(name, (view.shape().to_vec(), v));
        } else {
            out.other.insert(name, format!("{:?}", view.dtype()));
        }
    }
    Ok(out)
}

/// Saves `model` with torchvision's names (and a zero `num_batches_tracked`
/// per BatchNorm, so `load_state_dict` is strict-clean).
pub fn save_safetensors<D: Device<f32>, M: TensorCollection<f32, D>>(
    model: &M,
    path: &Path,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), StateError> {
    let sd = state_dict(model);
    let mut nbt: Vec<String> = sd
        .keys()
        .filter(|k| k.ends_with(".running_mean"))
        .map(|k| k.replace(".running_mean", ".num_batches_tracked"))
        .collect();
    nbt.sort();
    let tensors = sd
        .into_iter()
        .map(|(k, t)| (k, (t.shape, t.data)))
        .collect();
    write_safetensors(&tensors, &nbt, metadata, path)
}

/// Loads torchvision-named tensors into `model`. Strict: every model tensor
/// must be present with the same shape and f32 dtype, and every f32 tensor
/// of the file must belong to the model. Returns the file's metadata.
pub fn load_safetensors<D: Device<f32>, M: TensorCollection<f32, D>>(
    model: &mut M,
    path: &Path,
) -> Result<HashMap<String, String>, StateError> {
    let mut file = read_safetensors(path)?;
    load_tensors(model, &mut file.tensors, &file.other)?;
    Ok(file.metadata)
}

/// Loads from tensors already in memory (see [`load_safetensors`]); the
/// tensors used are removed from `tensors`.
pub fn load_tensors<D: Device<f32>, M: TensorCollection<f32, D>>(
    model: &mut M,
    tensors: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    other: &BTreeMap<String, String>,
) -> Result<(), StateError> {
    // Check everything before touching the model.
    let mut missing = Vec::new();
    for t in named_tensors(model) {
        let name = torchvision_name(&t.path);
        match tensors.get(&name) {
            Some((shape, _)) if *shape != t.shape => {
                return Err(StateError::Shape {
                    name,
                    file: shape.clone(),
                    model: t.shape,
                });
            }
            Some(_) => {}
            None => match other.get(&name) {
                Some(dtype) => {
                    return Err(StateError::Dtype {
                        name,
                        dtype: dtype.clone(),
                    });
                }
                None => missing.push(name),
            },
        }
    }
    if !missing.is_empty() {
        return Err(StateError::Missing(missing));
    }
    let mut source = |path: &str, _: &[usize]| {
        let name = torchvision_name(path);
        Ok(tensors.remove(&name).map(|(_, v)| v))
    };
    assign_tensors(model, &mut source)?;
    let unexpected: Vec<String> = tensors.keys().cloned().collect();
    if !unexpected.is_empty() {
        return Err(StateError::Unexpected(unexpected));
    }
    Ok(())
}

/// Sets the scale of the last BatchNorm of every residual branch to zero
/// (Goyal et al. 2017): each block then starts as the identity.
pub fn zero_init_last_bn<D: Device<f32>, M: TensorCollection<f32, D>>(model: &mut M) {
    scale_last_bn(model, 0.0);
}

/// Sets the scale of the last BatchNorm of every residual branch to `value`
/// ([`zero_init_last_bn`] is `value = 0`).
pub fn scale_last_bn<D: Device<f32>, M: TensorCollection<f32, D>>(model: &mut M, value: f32) {
    // The last branch BN of a block is its highest-numbered bnK inside `layerX.Y.`.
    let names: Vec<String> = named_tensors(model)
        .iter()
        .map(|t| torchvision_name(&t.path))
        .collect();
    let mut last: HashMap<String, String> = HashMap::new();
    for n in &names {
        if let Some(block) = n.strip_suffix(".weight").and_then(|s| s.rsplit_once(".bn"))
            && block.0.starts_with("layer")
        {
            let e = last.entry(block.0.to_string()).or_default();
            if block.1 > e.as_str() {
                *e = block.1.to_string();
            }
        }
    }
    let targets: Vec<String> = last
        .into_iter()
        .map(|(block, k)| format!("{block}.bn{k}.weight"))
        .collect();
    let mut source = |path: &str, shape: &[usize]| {
        let name = torchvision_name(path);
        Ok(targets
            .contains(&name)
            .then(|| vec![value; shape.iter().product()]))
    };
    assign_tensors(model, &mut source).expect("setting scales does not fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_torchvision() {
        use crate::model::resnet::{ResNet18, ResNet101};
        assert_eq!(torchvision_name("bn1.scale"), "bn1.weight");
        assert_eq!(torchvision_name("layer1.0.bn2.bias"), "layer1.0.bn2.bias");
        let dev: Cpu = Default::default();
        let m: ResNet101<10, f32, Cpu> = BuildModule::build(&dev);
        let names = state_dict(&m);
        for tv in [
            "conv1.weight",
            "bn1.weight",
            "bn1.running_mean",
            "layer1.0.conv1.weight",
            "layer1.1.bn2.bias",
            "layer3.22.bn3.running_var",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.weight",
            "fc.weight",
            "fc.bias",
        ] {
            assert!(names.contains_key(tv), "{tv}");
        }
        // torchvision's resnet18 state_dict: 122 tensors with
        // num_batches_tracked, of which 20 BatchNorms have one each.
        let m: ResNet18<10, f32, Cpu> = BuildModule::build(&dev);
        assert_eq!(state_dict(&m).len(), 122 - 20);
        assert!(state_dict(&m).keys().all(|k| !k.contains("scale")));
    }

    #[test]
    fn save_then_load_gives_identical_outputs_and_strictness_holds() {
        use crate::model::resnet::{ResNet18, ResNet34};
        use crate::model::zoo::{Input, Network};
        let dir = tempfile::tempdir().unwrap();
        let dev = Cpu::seed_from_u64(3);
        let mut a: ResNet18<10, f32, Cpu> = BuildModule::build(&dev);
        // Non-trivial BatchNorm statistics, so eval mode depends on them.
        let mut k = 0u32;
        let mut stats = |path: &str, shape: &[usize]| {
            let n: usize = shape.iter().product();
            Ok(path.contains("running_").then(|| {
                (0..n)
                    .map(|i| {
                        k = k.wrapping_add(1);
                        0.5 + ((i as u32 ^ k) % 7) as f32 * 0.1
                    })
                    .collect()
            }))
        };
        assign_tensors(&mut a, &mut stats).unwrap();
        let x =
            || -> Input<Cpu> { dev.sample_normal_like(&(2usize, 40usize, 48usize, Const::<3>)) };
        let x1 = x();
        let ya = a.forward_eval(x1.clone()).as_vec();
        let path = dir.path().join("m.safetensors");
        save_safetensors(&a, &path, None).unwrap();
        let mut b: ResNet18<10, f32, Cpu> = BuildModule::build(&Cpu::seed_from_u64(99));
        assert_ne!(b.forward_eval(x1.clone()).as_vec(), ya);
        load_safetensors(&mut b, &path).unwrap();
        assert_eq!(b.forward_eval(x1).as_vec(), ya);

        // Another architecture or class count is refused with a clear error.
        let mut c: ResNet34<10, f32, Cpu> = BuildModule::build(&dev);
        assert!(matches!(
            load_safetensors(&mut c, &path),
            Err(StateError::Missing(_))
        ));
        let mut d: ResNet18<12, f32, Cpu> = BuildModule::build(&dev);
        let e = load_safetensors(&mut d, &path).unwrap_err();
        assert!(
            matches!(e, StateError::Shape { ref name, .. } if name == "fc.weight"),
            "{e}"
        );
    }

    #[test]
    fn zero_init_zeroes_exactly_the_last_bn_of_each_branch() {
        use crate::model::resnet::ResNet50;
        let dev: Cpu = Default::default();
        let mut m: ResNet50<10, f32, Cpu> = BuildModule::build(&dev);
        zero_init_last_bn(&mut m);
        let sd = state_dict(&m);
        let zero = |k: &str| sd[k].data.iter().all(|&v| v == 0.0);
        assert!(zero("layer1.0.bn3.weight"));
        assert!(zero("layer4.2.bn3.weight"));
        assert!(!zero("layer1.0.bn2.weight"));
        assert!(!zero("layer1.0.downsample.1.weight"));
        assert!(!zero("bn1.weight"));
        let zeroed = sd
            .keys()
            .filter(|k| k.ends_with("weight") && zero(k))
            .count();
        assert_eq!(zeroed, 16, "one per bottleneck block");
    }
}

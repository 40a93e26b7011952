//! Checkpoints: a folder holding the model (torchvision-named safetensors),
//! the optimizer's momentum (safetensors keyed by dfdx path, which is
//! torchvision's name but for BatchNorm's `scale`) and
//! `state.json` (config, schedule, loader position, history). Written into
//! `NAME.tmp/` and swapped in by renames, so a failure while writing (a full
//! disk) leaves the previous checkpoint as it was.

use super::TrainError;
use crate::model::state::{self, StateError};
use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// File names inside a checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// Momentum buffers.
pub const OPTIM_FILE: &str = "optim.safetensors";
/// Everything else, as JSON.
pub const STATE_FILE: &str = "state.json";

/// Writes a checkpoint folder `dir` atomically (see the module docs).
pub fn write<D: Device<f32>, M: TensorCollection<f32, D>>(
    dir: &Path,
    model: &M,
    momentum: BTreeMap<String, Vec<f32>>,
    state_json: &str,
    metadata: HashMap<String, String>,
) -> Result<(), TrainError> {
    let tmp = sibling(dir, "tmp");
    let old = sibling(dir, "old");
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| TrainError::Checkpoint {
            path: dir.to_owned(),
            source: StateError::Io { path: p, source },
        }
    };
    let wrap = |source| TrainError::Checkpoint {
        path: dir.to_owned(),
        source,
    };
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = (|| {
        state::save_safetensors(model, &tmp.join(MODEL_FILE), Some(metadata)).map_err(wrap)?;
        let m = momentum
            .into_iter()
            .map(|(k, v)| {
                let n = v.len();
                (k, (vec![n], v))
            })
            .collect();
        state::write_safetensors(&m, &[], None, &tmp.join(OPTIM_FILE)).map_err(wrap)?;
        crate::files::write_file_atomic(&tmp.join(STATE_FILE), state_json.as_bytes())
            .map_err(io(&tmp.join(STATE_FILE)))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn sibling(dir: &Path, ext: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map_or("ckpt".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.{ext}"))
}

/// The checkpoint folder to resume from, given a run's output folder or a
/// checkpoint folder: `last`, or `last.old` if a crash fell between the two renames.
pub fn locate(path: &Path) -> Result<PathBuf, TrainError> {
    let candidates = [
        path.to_owned(),
        path.join("checkpoints").join("last"),
        path.join("checkpoints").join("last.old"),
        sibling(path, "old"),
    ];
    candidates
        .into_iter()
        .find(|c| c.join(STATE_FILE).is_file())
        .ok_or_else(|| TrainError::NoCheckpoint {
            path: path.to_owned(),
        })
}

/// The run folder that `path` (given to `--resume`: a run folder or one of
/// its checkpoint folders) belongs to, where the resumed run continues:
/// wherever the folder now is and whatever it was called when written (a
/// copied run continues in the copy, never in the original).
pub fn run_folder(path: &Path) -> Result<PathBuf, TrainError> {
    let dir = locate(path)?;
    // RUN/checkpoints/<name> (also what `locate` finds in a run folder)
    // belongs to RUN; a checkpoint folder anywhere else to its parent.
    let parent = dir.parent().unwrap_or(Path::new("."));
    let run = match parent.file_name() {
        Some(n) if n == "checkpoints" => parent.parent().unwrap_or(Path::new(".")),
        _ => parent,
    };
    Ok(run.to_owned())
}

/// Reads the momentum buffers of a checkpoint, refusing any that names no
/// tensor of `model`: SGD looks buffers up by path, so a stray name (another
/// architecture, or a checkpoint written when the paths were named
/// differently) would silently restart that parameter's momentum at zero.
pub fn read_momentum<D: Device<f32>, M: TensorCollection<f32, D>>(
    dir: &Path,
    model: &M,
) -> Result<BTreeMap<String, Vec<f32>>, TrainError> {
    let wrap = |source| TrainError::Checkpoint {
        path: dir.to_owned(),
        source,
    };
    let f = state::read_safetensors(&dir.join(OPTIM_FILE)).map_err(wrap)?;
    let paths: std::collections::HashSet<String> = state::named_tensors(model)
        .into_iter()
        .map(|t| t.path)
        .collect();
    let unexpected: Vec<String> = f
        .tensors
        .keys()
        .filter(|k| !paths.contains(*k))
        .cloned()
        .collect();
    if !unexpected.is_empty() {
        return Err(wrap(StateError::Unexpected(unexpected)));
    }
    Ok(f.tensors.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cifar::ResNet20;

    #[test]
    fn momentum_under_a_name_the_model_lacks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dev: Cpu = Default::default();
        let model: ResNet20<10, f32, Cpu> = BuildModule::build(&dev);
        let write = |name: &str| {
            let m = BTreeMap::from([(name.to_string(), (vec![2], vec![0.5f32, 1.0]))]);
            state::write_safetensors(&m, &[], None, &dir.path().join(OPTIM_FILE)).unwrap();
        };
        write("fc.bias");
        assert_eq!(
            read_momentum(dir.path(), &model).unwrap()["fc.bias"],
            [0.5, 1.0]
        );
        // The path of the same tensor before the blocks took torchvision's names.
        write("layer1.first.a.conv.weight");
        let e = read_momentum(dir.path(), &model).unwrap_err();
        assert!(
            matches!(&e, TrainError::Checkpoint { source: StateError::Unexpected(n), .. } if n == &["layer1.first.a.conv.weight"]),
            "{e}"
        );
    }
}

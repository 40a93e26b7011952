//! Checkpoints: a folder holding the model (torchvision-named safetensors),
//! the optimizer's momentum (safetensors keyed by dfdx path, which is
//! torchvision's name but for BatchNorm's `scale`) and
//! `state.json` (config, schedule, loader position, history). Written into
//! `NAME.tmp/` and swapped in by renames, so a failure while writing (a full
//! disk) leaves the previous checkpoint as it was.
//!
//! Nothing in a checkpoint can be silently wrong: `state.json` records the
//! SHA-256 and size of the model and momentum files (`"files"`), and
//! `SHA256SUMS` (the format of `sha256sum -c`) covers all three;
//! [`verify`] checks them before a resume, an evaluation or the multi-scale
//! test, and names the newest intact checkpoint when one is damaged. The
//! previous checkpoints are kept as `checkpoints/step-NNNNNNNN` (the last
//! `keep - 1` of them), so one damaged file does not lose the run.

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
/// Checksums of the three files above, as `sha256sum` writes them.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// SHA-256 (hex) and size of a file.
fn digest(path: &Path) -> std::io::Result<(String, u64)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, n))
}

/// Writes a checkpoint folder `dir` atomically (see the module docs).
///
/// The checkpoint that `dir` held before is kept as `step-NNNNNNNN` beside
/// it, and only the newest `keep - 1` of those stay.
pub fn write<D: Device<f32>, M: TensorCollection<f32, D>>(
    dir: &Path,
    model: &M,
    momentum: BTreeMap<String, Vec<f32>>,
    state_json: &str,
    metadata: HashMap<String, String>,
    keep: usize,
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
        let mut files = serde_json::Map::new();
        let mut sums = String::new();
        for name in [MODEL_FILE, OPTIM_FILE] {
            let (sha, bytes) = digest(&tmp.join(name)).map_err(io(&tmp.join(name)))?;
            sums.push_str(&format!("{sha}  {name}\n"));
            files.insert(
                name.into(),
                serde_json::json!({ "sha256": sha, "bytes": bytes }),
            );
        }
        let mut st: serde_json::Value =
            serde_json::from_str(state_json).expect("the trainer's state is JSON");
        st["files"] = serde_json::Value::Object(files);
        let text = serde_json::to_string_pretty(&st).expect("JSON serialises");
        crate::files::write_file_atomic(&tmp.join(STATE_FILE), text.as_bytes())
            .map_err(io(&tmp.join(STATE_FILE)))?;
        let (sha, _) = digest(&tmp.join(STATE_FILE)).map_err(io(&tmp.join(STATE_FILE)))?;
        sums.push_str(&format!("{sha}  {STATE_FILE}\n"));
        crate::files::write_file_atomic(&tmp.join(SUMS_FILE), sums.as_bytes())
            .map_err(io(&tmp.join(SUMS_FILE)))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        // Kept under its step when older checkpoints are kept; else as
        // NAME.old until the new one is in place.
        let kept = match step_of(dir) {
            Some(step) if keep > 1 => dir.with_file_name(format!("step-{step:08}")),
            _ => old.clone(),
        };
        let _ = std::fs::remove_dir_all(&kept);
        std::fs::rename(dir, &kept).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    let _ = std::fs::remove_dir_all(&old);
    for stale in kept_checkpoints(dir)
        .into_iter()
        .skip(keep.saturating_sub(1))
    {
        let _ = std::fs::remove_dir_all(stale);
    }
    Ok(())
}

/// The step recorded in a checkpoint folder's `state.json`.
fn step_of(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("step")?.as_u64().map(|s| s as usize)
}

/// The `step-NNNNNNNN` folders beside checkpoint folder `dir`, newest first.
fn kept_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<usize>().ok()?;
            Some((step, e.path()))
        })
        .collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.0));
    v.into_iter().map(|(_, p)| p).collect()
}

/// Checks every file of checkpoint folder `dir` against the checksums
/// written with it. A checkpoint written before checksums existed passes
/// with a warning. A damaged one is [`TrainError::Corrupt`], naming the
/// file and the newest intact checkpoint kept beside it.
pub fn verify(dir: &Path) -> Result<(), TrainError> {
    let Err((file, why)) = check_files(dir) else {
        return Ok(());
    };
    let newest_intact = std::iter::once(dir.with_file_name("last"))
        .chain(kept_checkpoints(dir))
        .filter(|d| d != dir && d.join(STATE_FILE).is_file())
        .find(|d| check_files(d).is_ok());
    Err(TrainError::Corrupt {
        dir: dir.to_owned(),
        file,
        why,
        newest_intact,
    })
}

/// `Err((file, why))` for the first file that does not match.
fn check_files(dir: &Path) -> Result<(), (String, String)> {
    let sums = match std::fs::read_to_string(dir.join(SUMS_FILE)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::warn!(
                "{}: no {SUMS_FILE} (written before checkpoints had checksums); not verified",
                dir.display()
            );
            return Ok(());
        }
        Err(e) => return Err((SUMS_FILE.into(), e.to_string())),
    };
    let mut listed = Vec::new();
    for line in sums.lines() {
        let Some((sha, name)) = line.split_once("  ") else {
            return Err((SUMS_FILE.into(), format!("unreadable line {line:?}")));
        };
        listed.push(name.to_string());
        let (got, _) = digest(&dir.join(name)).map_err(|e| (name.to_string(), e.to_string()))?;
        if got != sha {
            return Err((name.to_string(), format!("SHA-256 {got}, written as {sha}")));
        }
    }
    for name in [MODEL_FILE, OPTIM_FILE, STATE_FILE] {
        if !listed.iter().any(|l| l == name) {
            return Err((SUMS_FILE.into(), format!("{name} is not listed")));
        }
    }
    // state.json's own record of the two tensor files (and their sizes).
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(STATE_FILE))
            .map_err(|e| (STATE_FILE.to_string(), e.to_string()))?,
    )
    .map_err(|e| (STATE_FILE.to_string(), e.to_string()))?;
    for name in [MODEL_FILE, OPTIM_FILE] {
        let rec = &st["files"][name];
        let bytes = std::fs::metadata(dir.join(name))
            .map_err(|e| (name.to_string(), e.to_string()))?
            .len();
        if rec["bytes"].as_u64() != Some(bytes) {
            return Err((
                name.to_string(),
                format!("{bytes} bytes, written as {}", rec["bytes"]),
            ));
        }
    }
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
    let last = path.join("checkpoints").join("last");
    let candidates = [
        path.to_owned(),
        last.clone(),
        path.join("checkpoints").join("last.old"),
        sibling(path, "old"),
    ];
    candidates
        .into_iter()
        // A crash between the two renames of a write keeping older
        // checkpoints leaves the newest as step-NNNNNNNN.
        .chain(kept_checkpoints(&last).into_iter().take(1))
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

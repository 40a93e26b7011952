//! Finding the inputs: splits, classes, and every file with its label.
//!
//! Layouts understood:
//! - ImageNet train: `ROOT/train/<wnid>/*.JPEG` (any class-per-folder tree;
//!   files are found recursively inside each class folder).
//! - ImageNet val sorted into `ROOT/val/<wnid>/` folders.
//! - ImageNet val as one flat folder, labelled by (first found wins):
//!   an explicit `--val-labels` file; `LOC_val_solution.csv` (Kaggle form,
//!   the first wnid of each row; in ROOT, ROOT/val or ROOT's parent); the
//!   devkit's `ILSVRC2012_validation_ground_truth.txt` (ILSVRC2012_IDs in the
//!   devkit's order, mapped to wnids through the bundled ILSVRC2012 val
//!   labels, which must agree); or, for files named `ILSVRC2012_val_*.JPEG`,
//!   the bundled ILSVRC2012 val labels themselves.
//! - Any other folder of class folders, packed as one split.
//!
//! Files are sorted by relative path (bytewise), so the input order, and so
//! the shards, do not depend on the file system's listing order.
//!
//! Symbolic links are followed, but each real folder is walked at most once
//! per split (a link loop such as `ln -s . loop` adds nothing), and the
//! folders in [`WalkOptions::exclude`] (the pack's own output) are never
//! walked. Names that are not UTF-8 are kept exactly in reports, their
//! invalid bytes written as `\xNN` (a literal backslash as `\\`); see
//! [`display_name`].

use crate::error::PackError;
use crate::format::{ClassInfo, SkippedFile};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The 1000 ILSVRC2012 classes, `label\twnid\tname` per line, label = index
/// of the wnid in sorted order (torchvision's and the devkit's convention).
pub const IMAGENET_CLASSES_TSV: &str = include_str!("../../imagenet/classes.tsv");
/// Labels (sorted-wnid index) of the 50,000 ILSVRC2012 val images, line i for
/// `ILSVRC2012_val_{i+1:08}.JPEG`.
pub const IMAGENET_VAL_LABELS: &str = include_str!("../../imagenet/ILSVRC2012_val_labels.txt");

/// The ILSVRC2012 class list, in label order.
pub fn imagenet_classes() -> Vec<ClassInfo> {
    IMAGENET_CLASSES_TSV
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let mut it = l.splitn(3, '\t');
            let _label = it.next()?;
            Some(ClassInfo {
                wnid: it.next()?.to_string(),
                name: it.next()?.to_string(),
            })
        })
        .collect()
}

/// Where the class list (and so the labels) comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClassSource {
    /// Sorted folder names of the train split (torchvision's `ImageFolder`);
    /// on the full ILSVRC2012 train folder this equals [`ClassSource::Imagenet`].
    #[default]
    Folders,
    /// The 1000 ILSVRC2012 classes, whatever subset of folders is present.
    Imagenet,
    /// A text file, one class per line: `wnid [name]`.
    File(PathBuf),
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Full path.
    pub path: PathBuf,
    /// Path relative to the input root, with `/` separators (used in reports).
    pub rel: String,
    /// Class label.
    pub label: u32,
}

/// The inputs of one split.
#[derive(Debug, Clone)]
pub struct SplitInputs {
    /// Split name (`train`, `val`, or the name given for a bare class tree).
    pub name: String,
    /// Labelled files, sorted by `rel`.
    pub files: Vec<InputFile>,
    /// Files found that cannot be labelled (counted as skipped).
    pub unlabeled: Vec<SkippedFile>,
    /// The class list.
    pub classes: Vec<ClassInfo>,
}

impl SplitInputs {
    /// Files seen: labelled plus unlabelled.
    pub fn files_seen(&self) -> u64 {
        (self.files.len() + self.unlabeled.len()) as u64
    }
}

/// Options for [`discover`].
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Class list source.
    pub classes: ClassSource,
    /// Explicit val ground truth (`LOC_val_solution.csv`, the devkit's
    /// ground-truth file, or `file<TAB or space or comma>wnid` lines).
    pub val_labels: Option<PathBuf>,
    /// Split name for a bare class-per-folder tree (default `train`).
    pub bare_split_name: Option<String>,
    /// Folders never walked as input, whatever their name (the pack's
    /// output, when it lies inside the input tree).
    pub exclude: Vec<PathBuf>,
}

/// Folders already walked (by their real path) and those never to walk.
struct Visit {
    seen: HashSet<PathBuf>,
    exclude: Vec<PathBuf>,
}

impl Visit {
    fn new(opts: &WalkOptions) -> Visit {
        Visit {
            seen: HashSet::new(),
            exclude: opts
                .exclude
                .iter()
                .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()))
                .collect(),
        }
    }

    fn excluded(&self, dir: &Path) -> bool {
        dir.canonicalize().is_ok_and(|real| self.excludes(&real))
    }

    /// Whether the real path `real` lies in an excluded folder.
    fn excludes(&self, real: &Path) -> bool {
        self.exclude.iter().any(|e| real.starts_with(e))
    }

    /// Whether `dir` should be walked now: not excluded, and its real
    /// folder not walked before (marks it walked).
    fn enter(&mut self, dir: &Path) -> bool {
        let Ok(real) = dir.canonicalize() else {
            return true; // read_dir will name the problem
        };
        if self.excludes(&real) {
            log::info!("{}: the pack's output, not walked as input", dir.display());
            return false;
        }
        if !self.seen.insert(real.clone()) {
            log::warn!(
                "{}: links to {}, already walked; not walked again",
                dir.display(),
                real.display()
            );
            return false;
        }
        true
    }
}

/// A file name as reports show it: its UTF-8 parts as they are, each byte
/// that is not UTF-8 as `\xNN`, and each backslash doubled (so two different
/// names never show the same).
pub fn display_name(name: &std::ffi::OsStr) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut out = String::new();
        for chunk in name.as_bytes().utf8_chunks() {
            out.push_str(&chunk.valid().replace('\\', "\\\\"));
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02X}"));
            }
        }
        out
    }
    #[cfg(not(unix))]
    {
        name.to_string_lossy().replace('\\', "\\\\")
    }
}

/// Finds the splits under `root` and lists their files with labels.
pub fn discover(root: &Path, opts: &WalkOptions) -> Result<Vec<SplitInputs>, PackError> {
    if !root.is_dir() {
        return Err(layout(root, "not a folder"));
    }
    let train = root.join("train");
    let val = root.join("val");
    let mut splits = Vec::new();
    let visit = Visit::new(opts);
    if train.is_dir() || val.is_dir() {
        let train_folders = if train.is_dir() {
            Some(class_folders(&train, &visit)?)
        } else {
            None
        };
        let classes = class_list(&opts.classes, train_folders.as_deref(), root)?;
        if let Some(folders) = &train_folders {
            splits.push(folder_split(
                "train", root, &train, folders, &classes, opts,
            )?);
        }
        if val.is_dir() {
            let folders = class_folders(&val, &visit)?;
            if !folders.is_empty() {
                splits.push(folder_split("val", root, &val, &folders, &classes, opts)?);
            } else {
                splits.push(flat_val_split(root, &val, &classes, opts)?);
            }
        }
    } else {
        let folders = class_folders(root, &visit)?;
        if folders.is_empty() {
            return Err(layout(
                root,
                "no train/ or val/ folder and no class folders: expected ROOT/train/<class>/*, ROOT/val/..., or ROOT/<class>/*",
            ));
        }
        let classes = class_list(&opts.classes, Some(&folders), root)?;
        let name = opts
            .bare_split_name
            .clone()
            .unwrap_or_else(|| "train".into());
        splits.push(folder_split(&name, root, root, &folders, &classes, opts)?);
    }
    Ok(splits)
}

fn layout(path: &Path, detail: impl Into<String>) -> PackError {
    PackError::Layout {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Sorted names of the sub-folders of `dir` (hidden and excluded ones left out).
fn class_folders(dir: &Path, visit: &Visit) -> Result<Vec<String>, PackError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(PackError::io(dir))? {
        let e = e.map_err(PackError::io(dir))?;
        let name = display_name(&e.file_name());
        if !name.starts_with('.') && e.path().is_dir() && !visit.excluded(&e.path()) {
            if e.file_name().to_str().is_none() {
                return Err(layout(&e.path(), "class folder name is not UTF-8"));
            }
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn class_list(
    source: &ClassSource,
    folders: Option<&[String]>,
    root: &Path,
) -> Result<Vec<ClassInfo>, PackError> {
    let known: HashMap<String, String> = imagenet_classes()
        .into_iter()
        .map(|c| (c.wnid, c.name))
        .collect();
    let named = |wnid: &str| ClassInfo {
        wnid: wnid.to_string(),
        name: known.get(wnid).cloned().unwrap_or_else(|| wnid.to_string()),
    };
    match source {
        ClassSource::Imagenet => Ok(imagenet_classes()),
        ClassSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(PackError::io(path))?;
            let mut classes = Vec::new();
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                let (wnid, name) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
                let mut c = named(wnid);
                if !name.trim().is_empty() {
                    c.name = name.trim().to_string();
                }
                classes.push(c);
            }
            if classes.is_empty() {
                return Err(layout(path, "class list is empty"));
            }
            Ok(classes)
        }
        ClassSource::Folders => match folders {
            Some(f) if !f.is_empty() => Ok(f.iter().map(|w| named(w)).collect()),
            // No train folders to name the classes (a val-only input): the ILSVRC2012 list.
            _ => {
                log::info!(
                    "{}: no train class folders; using the ILSVRC2012 class list",
                    root.display()
                );
                Ok(imagenet_classes())
            }
        },
    }
}

/// Every regular file under `dir`, recursively, as (full path, relative
/// path), sorted; each real folder once (see [`Visit`]).
fn files_under(
    dir: &Path,
    root: &Path,
    visit: &mut Visit,
    out: &mut Vec<(PathBuf, String)>,
) -> Result<(), PackError> {
    if !visit.enter(dir) {
        return Ok(());
    }
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(PackError::io(dir))? {
        entries.push(e.map_err(PackError::io(dir))?.path());
    }
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, root, visit, out)?;
        } else {
            out.push((p.clone(), rel_path(&p, root)));
        }
    }
    Ok(())
}

fn rel_path(p: &Path, root: &Path) -> String {
    let rel = p.strip_prefix(root).unwrap_or(p);
    rel.components()
        .map(|c| display_name(c.as_os_str()))
        .collect::<Vec<_>>()
        .join("/")
}

fn folder_split(
    name: &str,
    root: &Path,
    dir: &Path,
    folders: &[String],
    classes: &[ClassInfo],
    opts: &WalkOptions,
) -> Result<SplitInputs, PackError> {
    let mut visit = Visit::new(opts);
    let label_of: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.wnid.as_str(), i as u32))
        .collect();
    let mut files = Vec::new();
    let mut unlabeled = Vec::new();
    for folder in folders {
        let Some(&label) = label_of.get(folder.as_str()) else {
            return Err(layout(
                &dir.join(folder),
                "class folder is not in the class list (see --classes)",
            ));
        };
        let mut found = Vec::new();
        files_under(&dir.join(folder), root, &mut visit, &mut found)?;
        files.extend(
            found
                .into_iter()
                .map(|(path, rel)| InputFile { path, rel, label }),
        );
    }
    // Loose files beside the class folders have no label.
    for e in std::fs::read_dir(dir).map_err(PackError::io(dir))? {
        let p = e.map_err(PackError::io(dir))?.path();
        if p.is_file() {
            unlabeled.push(SkippedFile {
                path: rel_path(&p, root),
                reason: "not inside a class folder".into(),
            });
        }
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    unlabeled.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(SplitInputs {
        name: name.into(),
        files,
        unlabeled,
        classes: classes.to_vec(),
    })
}

/// Ground-truth files looked for beside a flat val folder, in order.
const LOC_CSV: &str = "LOC_val_solution.csv";
const DEVKIT_GT: &str = "ILSVRC2012_validation_ground_truth.txt";

fn flat_val_split(
    root: &Path,
    val: &Path,
    classes: &[ClassInfo],
    opts: &WalkOptions,
) -> Result<SplitInputs, PackError> {
    let mut found = Vec::new();
    files_under(val, root, &mut Visit::new(opts), &mut found)?;
    let candidates = |name: &str| {
        let mut v = vec![root.join(name), val.join(name)];
        if let Some(parent) = root.parent() {
            v.push(parent.join(name));
        }
        v.push(root.join("ILSVRC2012_devkit_t12/data").join(name));
        v
    };
    let gt_path = opts.val_labels.clone().or_else(|| {
        candidates(LOC_CSV)
            .into_iter()
            .chain(candidates(DEVKIT_GT))
            .find(|p| p.is_file())
    });
    // Map from file stem (e.g. ILSVRC2012_val_00000001) to wnid.
    let by_stem: HashMap<String, String> = match &gt_path {
        Some(p) => read_val_labels(p)?,
        None => bundled_val_labels(),
    };
    let source = gt_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the bundled ILSVRC2012 val labels".into());
    let label_of: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.wnid.as_str(), i as u32))
        .collect();
    let mut files = Vec::new();
    let mut unlabeled = Vec::new();
    for (path, rel) in found {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match by_stem.get(&stem) {
            Some(wnid) => match label_of.get(wnid.as_str()) {
                Some(&label) => files.push(InputFile { path, rel, label }),
                None => unlabeled.push(SkippedFile {
                    path: rel,
                    reason: format!("ground-truth class {wnid} is not in the class list"),
                }),
            },
            None => unlabeled.push(SkippedFile {
                path: rel,
                reason: format!("no ground-truth label in {source}"),
            }),
        }
    }
    Ok(SplitInputs {
        name: "val".into(),
        files,
        unlabeled,
        classes: classes.to_vec(),
    })
}

fn bundled_val_labels() -> HashMap<String, String> {
    let classes = imagenet_classes();
    IMAGENET_VAL_LABELS
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let label: usize = l.trim().parse().ok()?;
            Some((
                format!("ILSVRC2012_val_{:08}", i + 1),
                classes.get(label)?.wnid.clone(),
            ))
        })
        .collect()
}

/// Reads a val ground-truth file in any of the supported forms into stem → wnid.
pub fn read_val_labels(path: &Path) -> Result<HashMap<String, String>, PackError> {
    let text = std::fs::read_to_string(path).map_err(PackError::io(path))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut map = HashMap::new();
    if lines.iter().all(|l| l.parse::<u32>().is_ok()) {
        // The devkit form: one ILSVRC2012_ID per val image, in file order.
        // The devkit's ID order is not the sorted-wnid order; the mapping is
        // recovered by joining with the bundled labels, and must be consistent.
        let bundled = bundled_val_labels();
        let mut id_to_wnid: HashMap<u32, String> = HashMap::new();
        for (i, l) in lines.iter().enumerate() {
            let id: u32 = l.parse().expect("checked");
            let stem = format!("ILSVRC2012_val_{:08}", i + 1);
            let Some(wnid) = bundled.get(&stem) else {
                return Err(layout(
                    path,
                    format!("line {}: more lines than ILSVRC2012 val images", i + 1),
                ));
            };
            if let Some(prev) = id_to_wnid.insert(id, wnid.clone())
                && prev != *wnid
            {
                return Err(layout(
                    path,
                    format!(
                        "line {}: ILSVRC2012_ID {id} maps to both {prev} and {wnid}; not the ILSVRC2012 ground truth",
                        i + 1
                    ),
                ));
            }
            map.insert(stem, wnid.clone());
        }
        return Ok(map);
    }
    for (i, line) in lines.iter().enumerate() {
        if i == 0 && line.starts_with("ImageId") {
            continue; // Kaggle CSV header
        }
        let mut parts = line
            .split(|c: char| c == ',' || c == '\t' || c.is_whitespace())
            .filter(|s| !s.is_empty());
        let (Some(file), Some(wnid)) = (parts.next(), parts.next()) else {
            return Err(layout(
                path,
                format!("line {}: expected `file,wnid ...`", i + 1),
            ));
        };
        let stem = Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        map.insert(stem, wnid.to_string());
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_lists_are_complete_and_sorted() {
        let c = imagenet_classes();
        assert_eq!(c.len(), 1000);
        assert!(c.windows(2).all(|w| w[0].wnid < w[1].wnid));
        assert_eq!(c[0].wnid, "n01440764");
        let v = bundled_val_labels();
        assert_eq!(v.len(), 50_000);
        // ILSVRC2012_val_00000001 is a sea snake (n01751748), label 65.
        assert_eq!(v["ILSVRC2012_val_00000001"], "n01751748");
        assert_eq!(c[65].wnid, "n01751748");
    }
}

//! cgroup v2: create `<hierarchy>/<parent>/<id>`, enable the controllers its files
//! need on the way down, write the `--cgroup` values, then move the jailer in, so
//! spry and every thread it starts are counted and limited from their first
//! instruction.

use std::path::{Path, PathBuf};

use crate::error::JailError;

/// Where the mounts are listed; the cgroup2 hierarchy is found there, as Firecracker does.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One `--cgroup <file>=<value>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// A file of the cgroup, e.g. `memory.max`.
    pub file: String,
    /// What to write to it.
    pub value: String,
}

/// The cgroup spry runs in.
#[derive(Debug, Clone)]
pub struct CgroupPlan {
    /// The parent, relative to the hierarchy's root.
    pub parent: PathBuf,
    /// The files to write.
    pub settings: Vec<CgroupSetting>,
}

impl CgroupPlan {
    /// Builds the cgroup and moves this process into it. Returns the cgroup entered,
    /// if any.
    ///
    /// As in Firecracker, with no `--cgroup` settings no cgroup is created: the jailer
    /// moves into `<parent>` if it exists (a cgroup the caller set up) and otherwise
    /// stays where it is.
    pub fn enter(&self, id: &str) -> Result<Option<PathBuf>, JailError> {
        let mountinfo = std::fs::read_to_string(MOUNTINFO).map_err(|source| JailError::Open {
            path: MOUNTINFO.into(),
            source,
        })?;
        let root = cgroup2_mount(&mountinfo).ok_or(JailError::NoCgroup2(MOUNTINFO))?;
        if self.settings.is_empty() {
            let parent = root.join(&self.parent);
            if !parent.is_dir() {
                return Ok(None);
            }
            attach_self(&parent)?;
            return Ok(Some(parent));
        }
        let available = read_file(&root.join("cgroup.controllers"))?;
        let controllers = self.controllers(&root, &available)?;
        let cgroup = root.join(&self.parent).join(id);
        std::fs::create_dir_all(&cgroup).map_err(|source| JailError::CreateDir {
            path: cgroup.clone(),
            source,
        })?;
        // A controller's files appear in a cgroup only once its parent enables the
        // controller for its children, and the parent only if its own parent did.
        for dir in std::iter::once(root.clone()).chain(
            ancestors_below(&self.parent)
                .into_iter()
                .map(|rel| root.join(rel)),
        ) {
            enable_controllers(&dir, &controllers)?;
        }
        for setting in &self.settings {
            write_file(&cgroup.join(&setting.file), &setting.value)?;
        }
        attach_self(&cgroup)?;
        Ok(Some(cgroup))
    }

    /// The controllers the settings need, checked against what the hierarchy offers,
    /// so a missing one is named before anything is created.
    fn controllers(&self, root: &Path, available: &str) -> Result<Vec<String>, JailError> {
        let offered: Vec<&str> = available.split_whitespace().collect();
        let mut needed: Vec<String> = Vec::new();
        for setting in &self.settings {
            let Some(controller) = controller_of(&setting.file) else {
                continue;
            };
            if !offered.contains(&controller) {
                return Err(JailError::ControllerUnavailable {
                    controller: controller.to_owned(),
                    file: setting.file.clone(),
                    hierarchy: root.to_owned(),
                    available: available.trim().to_owned(),
                });
            }
            if !needed.iter().any(|c| c == controller) {
                needed.push(controller.to_owned());
            }
        }
        Ok(needed)
    }
}

/// The controller a cgroup file belongs to: its prefix, except the core `cgroup.*`
/// files that every cgroup has.
fn controller_of(file: &str) -> Option<&str> {
    match file.split_once('.') {
        Some(("cgroup", _)) | None => None,
        Some((controller, _)) => Some(controller),
    }
}

/// `a/b/c` → `[a, a/b, a/b/c]`: every cgroup from just below the root to `parent`.
fn ancestors_below(parent: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = parent
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    dirs.reverse();
    dirs
}

/// Enables each controller for `dir`'s children unless it already is.
fn enable_controllers(dir: &Path, controllers: &[String]) -> Result<(), JailError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = read_file(&control)?;
    for controller in controllers {
        if !enabled.split_whitespace().any(|c| c == controller) {
            write_file(&control, &format!("+{controller}"))?;
        }
    }
    Ok(())
}

fn attach_self(cgroup: &Path) -> Result<(), JailError> {
    write_file(
        &cgroup.join("cgroup.procs"),
        &std::process::id().to_string(),
    )
}

fn read_file(path: &Path) -> Result<String, JailError> {
    std::fs::read_to_string(path).map_err(|source| JailError::Open {
        path: path.to_owned(),
        source,
    })
}

/// One write(2) of the whole value: cgroup files take one value per write.
fn write_file(path: &Path, value: &str) -> Result<(), JailError> {
    std::fs::write(path, value).map_err(|source| JailError::CgroupWrite {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// The mount point of the first cgroup2 file system in a mountinfo listing.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <dev> <root> <mount point> <options> [optional...] - <fstype> ..."
        let (fields, rest) = line.split_once(" - ")?;
        let fstype = rest.split_whitespace().next()?;
        let mount_point = fields.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 30 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn test_cgroup2_mount_is_found_on_a_hybrid_host() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn test_cgroup2_mount_with_a_space_is_unescaped() {
        let info = "40 30 0:35 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(info), Some(PathBuf::from("/mnt/cg two")));
    }

    #[test]
    fn test_no_cgroup2_mount_is_none() {
        assert_eq!(
            cgroup2_mount(&HYBRID.replace("cgroup2 cgroup2", "tmpfs x")),
            None
        );
    }

    #[test]
    fn test_core_cgroup_files_need_no_controller() {
        assert_eq!(controller_of("cgroup.max.descendants"), None);
        assert_eq!(controller_of("memory.max"), Some("memory"));
        assert_eq!(controller_of("cpu.max"), Some("cpu"));
    }

    #[test]
    fn test_ancestors_below_run_from_the_top_down() {
        assert_eq!(
            ancestors_below(Path::new("a/b/c")),
            [PathBuf::from("a"), "a/b".into(), "a/b/c".into()]
        );
    }

    #[test]
    fn test_missing_controller_is_named_before_anything_is_created() {
        let plan = CgroupPlan {
            parent: "spry".into(),
            settings: vec![CgroupSetting {
                file: "memory.max".into(),
                value: "1M".into(),
            }],
        };
        let err = plan
            .controllers(Path::new("/sys/fs/cgroup/unified"), "hugetlb\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cgroup controller \"memory\" (for --cgroup memory.max) is not available in the \
             cgroup v2 hierarchy at /sys/fs/cgroup/unified (it offers: \"hugetlb\")"
        );
    }
}

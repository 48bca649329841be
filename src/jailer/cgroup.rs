//! cgroups: create `<hierarchy>/<parent>/<id>`, write the `--cgroup` values, then
//! move the jailer in, so spry and every thread it starts are counted and limited
//! from their first instruction. Version 2 (one unified hierarchy; controllers
//! enabled on the way down) and version 1 (one hierarchy per controller, found by
//! its mount options; Firecracker's default), as Firecracker's jailer does both.

use std::path::{Path, PathBuf};

use crate::error::JailError;

/// Where the mounts are listed; the cgroup hierarchies are found there, as
/// Firecracker does.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// `--cgroup-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (or group of controllers).
    V1,
    /// The unified hierarchy.
    V2,
}

/// One `--cgroup <file>=<value>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// A file of the cgroup, e.g. `memory.max`.
    pub file: String,
    /// What to write to it.
    pub value: String,
}

/// The cgroup spry runs in, as asked for.
#[derive(Debug, Clone)]
pub struct CgroupPlan {
    /// Which hierarchy kind.
    pub version: CgroupVersion,
    /// The parent, relative to the hierarchy's root.
    pub parent: PathBuf,
    /// The files to write.
    pub settings: Vec<CgroupSetting>,
}

/// The plan resolved against this host's mounts: what to create, write and join.
#[derive(Debug)]
pub struct Placement {
    /// v2 only: the hierarchy's root and the controllers to enable from it down to
    /// the parent.
    enable: Option<(PathBuf, PathBuf, Vec<String>)>,
    /// The cgroups to enter.
    targets: Vec<Target>,
}

/// One cgroup to enter.
#[derive(Debug)]
struct Target {
    /// The hierarchy's mount point.
    mount: PathBuf,
    /// The cgroup, below `mount`.
    dir: PathBuf,
    /// Whether to create it (not when joining an existing parent).
    create: bool,
    /// The files to write in it.
    settings: Vec<CgroupSetting>,
    /// Where the pid goes: `cgroup.procs` (v2) or `tasks` (v1, as Firecracker).
    procs_file: &'static str,
}

impl CgroupPlan {
    /// Finds the hierarchies and checks each `--cgroup` file has one, before
    /// anything is created.
    pub fn place(&self, id: &str) -> Result<Placement, JailError> {
        let read_mounts = || {
            std::fs::read_to_string(MOUNTINFO).map_err(|source| JailError::Open {
                path: MOUNTINFO.into(),
                source,
            })
        };
        match self.version {
            CgroupVersion::V2 => self.place_v2(id, &read_mounts()?),
            CgroupVersion::V1 if self.settings.is_empty() => Ok(Placement {
                enable: None,
                targets: Vec::new(),
            }),
            CgroupVersion::V1 => self.place_v1(id, &read_mounts()?),
        }
    }

    /// As in Firecracker, with no `--cgroup` settings no cgroup is created: the jailer
    /// joins `<parent>` if it exists (a cgroup the caller set up) and otherwise stays
    /// where it is.
    fn place_v2(&self, id: &str, mountinfo: &str) -> Result<Placement, JailError> {
        let Some(root) = cgroup2_mount(mountinfo) else {
            if self.settings.is_empty() {
                return Ok(Placement {
                    enable: None,
                    targets: Vec::new(),
                });
            }
            return Err(JailError::NoCgroupHierarchy {
                what: "cgroup v2 hierarchy".into(),
                mountinfo: MOUNTINFO,
            });
        };
        if self.settings.is_empty() {
            let parent = root.join(&self.parent);
            let targets = if parent.is_dir() {
                vec![Target {
                    mount: root,
                    dir: parent,
                    create: false,
                    settings: Vec::new(),
                    procs_file: "cgroup.procs",
                }]
            } else {
                Vec::new()
            };
            return Ok(Placement {
                enable: None,
                targets,
            });
        }
        let available = read_file(&root.join("cgroup.controllers"))?;
        let controllers = self.v2_controllers(&root, &available)?;
        Ok(Placement {
            enable: Some((root.clone(), self.parent.clone(), controllers)),
            targets: vec![Target {
                dir: root.join(&self.parent).join(id),
                mount: root,
                create: true,
                settings: self.settings.clone(),
                procs_file: "cgroup.procs",
            }],
        })
    }

    /// The controllers the settings need, checked against what the hierarchy offers.
    fn v2_controllers(&self, root: &Path, available: &str) -> Result<Vec<String>, JailError> {
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

    /// One cgroup per hierarchy the settings touch (controllers mounted together,
    /// like `cpu,cpuacct`, share one).
    fn place_v1(&self, id: &str, mountinfo: &str) -> Result<Placement, JailError> {
        let mounts = cgroup1_mounts(mountinfo);
        let mut targets: Vec<Target> = Vec::new();
        for setting in &self.settings {
            let controller = controller_of(&setting.file).ok_or_else(|| {
                JailError::CgroupSetting(format!("{}={}", setting.file, setting.value))
            })?;
            let mount = mounts
                .iter()
                .find(|(_, controllers)| controllers.iter().any(|c| c == controller))
                .map(|(mount, _)| mount.clone())
                .ok_or_else(|| JailError::NoCgroupHierarchy {
                    what: format!("cgroup v1 hierarchy with the {controller:?} controller"),
                    mountinfo: MOUNTINFO,
                })?;
            match targets.iter_mut().find(|t| t.mount == mount) {
                Some(target) => target.settings.push(setting.clone()),
                None => targets.push(Target {
                    dir: mount.join(&self.parent).join(id),
                    mount,
                    create: true,
                    settings: vec![setting.clone()],
                    procs_file: "tasks",
                }),
            }
        }
        Ok(Placement {
            enable: None,
            targets,
        })
    }
}

impl Placement {
    /// Creates the cgroups, writes the values, then moves this process in. Returns
    /// the cgroups entered.
    pub fn enter(&self) -> Result<Vec<PathBuf>, JailError> {
        for target in self.targets.iter().filter(|t| t.create) {
            create_dir(&target.dir)?;
        }
        // A controller's files appear in a cgroup only once its parent enables the
        // controller for its children, and the parent only if its own parent did.
        if let Some((root, parent, controllers)) = &self.enable {
            let levels = std::iter::once(root.clone()).chain(
                ancestors_below(parent)
                    .into_iter()
                    .map(|rel| root.join(rel)),
            );
            for dir in levels {
                enable_controllers(&dir, controllers)?;
            }
        }
        for target in &self.targets {
            if target.procs_file == "tasks" && is_cpuset_hierarchy(&target.mount) {
                inherit_cpuset(&target.mount, &target.dir)?;
            }
            for setting in &target.settings {
                write_file(&target.dir.join(&setting.file), &setting.value)?;
            }
        }
        // Joined only once every value is written (a v1 cpuset accepts no task before
        // it has CPUs and memory nodes).
        let pid = std::process::id().to_string();
        for target in &self.targets {
            write_file(&target.dir.join(target.procs_file), &pid)?;
        }
        Ok(self.targets.iter().map(|t| t.dir.clone()).collect())
    }
}

/// A new v1 cpuset has no CPUs and no memory nodes, so no task can join it: copy
/// them from the parent, level by level from the top (as Firecracker does), unless
/// set already.
fn inherit_cpuset(mount: &Path, dir: &Path) -> Result<(), JailError> {
    let Ok(below) = dir.strip_prefix(mount) else {
        return Ok(());
    };
    let mut parent = mount.to_path_buf();
    for rel in ancestors_below(below) {
        let child = mount.join(rel);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if read_file(&child.join(file))?.trim().is_empty() {
                let value = read_file(&parent.join(file))?;
                write_file(&child.join(file), value.trim())?;
            }
        }
        parent = child;
    }
    Ok(())
}

fn is_cpuset_hierarchy(mount: &Path) -> bool {
    mount.join("cpuset.cpus").exists()
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

fn create_dir(dir: &Path) -> Result<(), JailError> {
    std::fs::create_dir_all(dir).map_err(|source| JailError::CreateDir {
        path: dir.to_owned(),
        source,
    })
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

/// Mountinfo lines as (mount point, fstype, super options).
fn mounts(mountinfo: &str) -> impl Iterator<Item = (PathBuf, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        // "<id> <parent> <dev> <root> <mount point> <options> [optional...] - <fstype>
        //  <source> <super options>"
        let (fields, rest) = line.split_once(" - ")?;
        let mut rest = rest.split_whitespace();
        let fstype = rest.next()?;
        let options = rest.nth(1).unwrap_or("");
        let mount_point = fields.split_whitespace().nth(4)?;
        Some((PathBuf::from(unescape_octal(mount_point)), fstype, options))
    })
}

/// The mount point of the first cgroup2 file system.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mounts(mountinfo)
        .find(|(_, fstype, _)| *fstype == "cgroup2")
        .map(|(mount, _, _)| mount)
}

/// Every cgroup v1 hierarchy with the controllers its super options name.
fn cgroup1_mounts(mountinfo: &str) -> Vec<(PathBuf, Vec<String>)> {
    mounts(mountinfo)
        .filter(|(_, fstype, _)| *fstype == "cgroup")
        .map(|(mount, _, options)| {
            let controllers = options.split(',').map(str::to_owned).collect();
            (mount, controllers)
        })
        .collect()
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

    const HYBRID_V1: &str = "\
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
32 30 0:28 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
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
            version: CgroupVersion::V2,
            parent: "spry".into(),
            settings: vec![CgroupSetting {
                file: "memory.max".into(),
                value: "1M".into(),
            }],
        };
        let err = plan
            .v2_controllers(Path::new("/sys/fs/cgroup/unified"), "hugetlb\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cgroup controller \"memory\" (for --cgroup memory.max) is not available in the \
             cgroup v2 hierarchy at /sys/fs/cgroup/unified (it offers: \"hugetlb\")"
        );
    }

    #[test]
    fn test_v1_settings_of_one_hierarchy_share_one_cgroup() {
        let plan = CgroupPlan {
            version: CgroupVersion::V1,
            parent: "spry".into(),
            settings: vec![
                CgroupSetting {
                    file: "cpu.cfs_quota_us".into(),
                    value: "20000".into(),
                },
                CgroupSetting {
                    file: "pids.max".into(),
                    value: "64".into(),
                },
                CgroupSetting {
                    file: "cpu.cfs_period_us".into(),
                    value: "100000".into(),
                },
            ],
        };
        let placement = plan.place_v1("vm1", HYBRID_V1).unwrap();
        let dirs: Vec<_> = placement.targets.iter().map(|t| t.dir.clone()).collect();
        assert_eq!(
            dirs,
            [
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/spry/vm1"),
                "/sys/fs/cgroup/pids/spry/vm1".into()
            ]
        );
        assert_eq!(placement.targets[0].settings.len(), 2);
    }

    #[test]
    fn test_v1_controller_without_a_hierarchy_is_named() {
        let plan = CgroupPlan {
            version: CgroupVersion::V1,
            parent: "spry".into(),
            settings: vec![CgroupSetting {
                file: "memory.limit_in_bytes".into(),
                value: "1".into(),
            }],
        };
        let err = plan.place_v1("vm1", HYBRID_V1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no cgroup v1 hierarchy with the \"memory\" controller is mounted (see \
             /proc/self/mountinfo)"
        );
    }
}

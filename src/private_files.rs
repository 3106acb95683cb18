//! Files only their owner may read: configs (the cluster secret, the admin
//! token), the data directory (SCRAM keys, rosters, queued messages) and
//! the admin token file of `starling dev`. Directories are made 0700 and
//! files 0600; `restrict_umask` makes every file the process creates later
//! (sled's, the logs of `dev`) the same without naming each one.
//!
//! Unix only, like the rest of the server (signals, `nix`).
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode bits that give group or others any access.
const OTHERS: u32 = 0o077;

/// Sets the process umask to 0077: files it creates from now on are 0600
/// at most, directories 0700.
pub fn restrict_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(OTHERS as _));
}

/// Creates `dir` (and its parents) as 0700, or makes an existing `dir` 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Takes group and other access away from everything under `dir` (and
/// `dir` itself): what an older version wrote 0644/0755. Returns how many
/// entries were changed. Symbolic links are not followed.
pub fn tighten_tree(dir: &Path) -> io::Result<usize> {
    let mut changed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & OTHERS != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7700))?;
            changed += 1;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(changed)
}

/// Writes `data` to `path` as a 0600 file (an existing file is truncated
/// and made 0600 first, so the data is never readable by others).
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(data)?;
    file.sync_all()
}

/// The mode of `path` when group or others may access it.
pub fn loose_mode(path: &Path) -> Option<u32> {
    let mode = fs::metadata(path).ok()?.permissions().mode();
    (mode & OTHERS != 0).then_some(mode & 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_files_and_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("secret");
        fs::write(&f, "x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(loose_mode(&f), Some(0o644));
        write_private(&f, b"y").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(fs::read(&f).unwrap(), b"y");
        assert_eq!(loose_mode(&f), None);
    }

    #[test]
    fn an_old_tree_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        fs::create_dir_all(root.join("db")).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(root.join("db"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("db/conf"), "x").unwrap();
        fs::set_permissions(root.join("db/conf"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(tighten_tree(&root).unwrap(), 3);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("db")), 0o700);
        assert_eq!(mode(&root.join("db/conf")), 0o600);
        assert_eq!(tighten_tree(&root).unwrap(), 0);
    }
}

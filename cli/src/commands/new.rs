//! `fanout new DIR`: a job crate of your own, in the spirit of `cargo lambda new`.
//!
//! The crate holds one job implementing `fanout_handler::Job` (word counts of text chunks: real
//! work with no network) and a `main` that serves it with one call, `fanout_handler::serve`,
//! which picks Lambda or HTTP from the environment. It depends on a fanout checkout by path,
//! since nothing is published to crates.io: `--fanout-path`, else the checkout this `fanout`
//! was built from. The files are templates in `cli/templates/new/`.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The templates, as (path in the new crate, text).
const TEMPLATES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/new/Cargo.toml.tmpl"),
    ),
    (
        "src/main.rs",
        include_str!("../../templates/new/src/main.rs.tmpl"),
    ),
    (
        "src/word_count.rs",
        include_str!("../../templates/new/src/word_count.rs.tmpl"),
    ),
    (
        "README.md",
        include_str!("../../templates/new/README.md.tmpl"),
    ),
    (
        "example.json",
        include_str!("../../templates/new/example.json.tmpl"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/new/gitignore.tmpl"),
    ),
];

/// The checkout this `fanout` was built from (the parent of the `cli` crate).
fn build_checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Create a job crate of your own in DIR: one job and a main that serves it, to build with
/// `fanout build` and run with `fanout local --handler`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The folder to create (it must not exist, or be empty); its name names the crate.
    pub dir: PathBuf,
    /// The crate's name (default: the folder's).
    #[arg(long)]
    pub name: Option<String>,
    /// The fanout checkout to depend on by path (default: the one this fanout was built from).
    #[arg(long, value_name = "PATH")]
    pub fanout_path: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<u8> {
    let created = new(&args)?;
    print!("{}", created.describe());
    Ok(crate::exit::OK)
}

/// What `fanout new` made.
#[derive(Debug, Clone)]
pub struct Created {
    pub dir: PathBuf,
    pub name: String,
    /// The fanout checkout it depends on.
    pub fanout_path: PathBuf,
    /// Whether that is the checkout this `fanout` was built from (no `--fanout-path`).
    pub fanout_path_defaulted: bool,
    /// Whether the checkout's Cargo.lock was copied, pinning the versions it is tested with.
    pub lock_copied: bool,
    pub files: Vec<String>,
}

impl Created {
    pub fn describe(&self) -> String {
        let from = if self.fanout_path_defaulted {
            "the checkout this fanout was built from; --fanout-path PATH picks another"
        } else {
            "--fanout-path"
        };
        let mut out = format!(
            "Created the job crate `{}` in {}\n  depends on fanout-handler at {} ({from})\n",
            self.name,
            self.dir.display(),
            self.fanout_path.join("handler").display()
        );
        for file in &self.files {
            out.push_str(&format!("  {file}\n"));
        }
        if self.lock_copied {
            out.push_str(
                "  Cargo.lock: the dependency versions the fanout checkout is tested with\n",
            );
        }
        out.push_str(&format!(
            "\nNext (README.md has the example request and its response):\n  cd {}\n  \
             fanout build --arch x86_64\n  \
             fanout local --handler target/lambda/{}/bootstrap-x86_64.zip\n",
            self.dir.display(),
            self.name
        ));
        out
    }
}

/// Writes the crate.
pub fn new(options: &Args) -> Result<Created> {
    let dir = &options.dir;
    let name = match &options.name {
        Some(name) => name.clone(),
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| {
                format!(
                    "{} has no folder name to call the crate by; give --name NAME",
                    dir.display()
                )
            })?,
    };
    check_name(&name)?;
    let (fanout_path, defaulted) = match &options.fanout_path {
        Some(path) => (checkout(path, "--fanout-path")?, false),
        None => (
            checkout(&build_checkout(), "the checkout this fanout was built from").map_err(
                |e| e.context("give the fanout checkout to depend on with --fanout-path PATH"),
            )?,
            true,
        ),
    };
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("{} exists and cannot be read", dir.display()))?
            .next()
            .is_none();
        if !empty {
            return Err(crate::exit::rejected(format!(
                "{} already exists and is not empty; fanout new writes a new crate, pick a new \
                 folder",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let handler_path = fanout_path.join("handler");
    let mut files = Vec::new();
    for (path, template) in TEMPLATES {
        let text = template
            .replace("{{name}}", &name)
            .replace("{{fanout_path}}", &fanout_path.display().to_string())
            .replace(
                "{{fanout_handler_path}}",
                &toml_string(&handler_path.display().to_string()),
            );
        let target = dir.join(path);
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
        files.push(path.to_string());
    }
    // The checkout's lock pins the versions its tests run with; cargo drops what the new
    // crate does not use. With a shared CARGO_TARGET_DIR the same versions mean the
    // checkout's compiled dependencies are reused.
    let lock = fanout_path.join("Cargo.lock");
    let lock_copied = lock.is_file() && std::fs::copy(&lock, dir.join("Cargo.lock")).is_ok();
    Ok(Created {
        dir,
        name,
        fanout_path,
        fanout_path_defaulted: defaulted,
        lock_copied,
        files,
    })
}

/// A fanout checkout: a folder with `handler/Cargo.toml` of the package `fanout-handler`.
fn checkout(path: &Path, what: &str) -> Result<PathBuf> {
    let manifest = path.join("handler/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|_| {
        crate::exit::rejected(format!(
            "{} ({what}) is not a fanout checkout: it has no handler/Cargo.toml; give the \
             folder of a fanout clone (the one holding handler/ and cli/)",
            path.display()
        ))
    })?;
    if !text.contains("name = \"fanout-handler\"") {
        return Err(crate::exit::rejected(format!(
            "{} ({what}) is not a fanout checkout: {} is not the fanout-handler package",
            path.display(),
            manifest.display()
        )));
    }
    std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// A package name cargo accepts that does not clash with the crate's own dependencies.
fn check_name(name: &str) -> Result<()> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(crate::exit::rejected(format!(
            "{name:?} is not a crate name: use ASCII letters, digits, - and _, starting with a \
             letter (give --name NAME to name the crate apart from its folder)"
        )));
    }
    const TAKEN: &[&str] = &[
        "fanout-handler",
        "fanout_handler",
        "restate-sdk",
        "serde",
        "test",
    ];
    if TAKEN.contains(&name) {
        return Err(crate::exit::rejected(format!(
            "{name:?} is a name the crate's dependencies use; give --name NAME"
        )));
    }
    Ok(())
}

/// `text` as a TOML basic string, quotes included.
fn toml_string(text: &str) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| match c {
            '\\' => vec!['\\', '\\'],
            '"' => vec!['\\', '"'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("word-count").is_ok());
        assert!(check_name("job_2").is_ok());
        for bad in ["", "2jobs", "my job", "fanout-handler", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_become_toml_strings() {
        assert_eq!(toml_string("/a/b"), "\"/a/b\"");
        assert_eq!(toml_string("C:\\x\"y"), "\"C:\\\\x\\\"y\"");
    }

    #[test]
    fn a_crate_is_written_and_an_occupied_folder_refused() {
        let temp = tempfile::tempdir().unwrap();
        let options = Args {
            dir: temp.path().join("wordcount"),
            name: None,
            fanout_path: None,
        };
        let created = new(&options).unwrap();
        assert_eq!(created.name, "wordcount");
        assert!(created.fanout_path_defaulted);
        let manifest = std::fs::read_to_string(created.dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"wordcount\""), "{manifest}");
        assert!(
            !manifest.contains("{{"),
            "every placeholder is filled: {manifest}"
        );
        let again = new(&options).unwrap_err().to_string();
        assert!(again.contains("already exists and is not empty"), "{again}");
        let bad = Args {
            dir: temp.path().join("other"),
            name: None,
            fanout_path: Some(temp.path().to_path_buf()),
        };
        let err = format!("{:#}", new(&bad).unwrap_err());
        assert!(err.contains("is not a fanout checkout"), "{err}");
    }
}

//! From a build's parameters to the steps a runner runs. Each toolchain gets the steps its
//! users would type, with the test step's extra arguments appended:
//!
//! | framework | steps | default label |
//! | --- | --- | --- |
//! | cargo | `cargo build --all-targets`, `cargo test` | `rust` |
//! | npm | `npm install --no-audit --no-fund`, `npm test` | `node` |
//! | pytest | `python3 -m pytest -ra` | `python` |
//! | go | `go build ./...`, `go test -v ./...` (`-cover` with `coverage`) | `go` |
//! | make | `make`, `make test` | `make` |
//! | steps | the `steps` given | none |
//! | auto | one `sh` step that looks at the source and runs the row above it matches | none |
//!
//! `setup` steps run before the planned ones; `labels` replaces the default label. A client
//! that names an application framework (`fastapi`, `express`, `axum`…) gets the toolchain
//! that tests it ([`APPLICATION_FRAMEWORKS`]); one that names none gets `auto`.

use taskhost_plugin_sdk::runners::{self, JobStep};
use taskhost_plugin_sdk::{TaskError, Value, string_list};

use crate::summary::Format;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    Cargo,
    Npm,
    Pytest,
    Go,
    Make,
    Steps,
    /// Chosen on the runner from the files the source holds.
    Auto,
}

pub const FRAMEWORKS: &[&str] = &["cargo", "npm", "pytest", "go", "make", "steps", "auto"];

/// Application frameworks clients name, with the toolchain that builds and tests them.
pub const APPLICATION_FRAMEWORKS: &[(&str, Framework)] = &[
    ("fastapi", Framework::Pytest),
    ("flask", Framework::Pytest),
    ("django", Framework::Pytest),
    ("starlette", Framework::Pytest),
    ("express", Framework::Npm),
    ("nestjs", Framework::Npm),
    ("nextjs", Framework::Npm),
    ("react", Framework::Npm),
    ("vue", Framework::Npm),
    ("actix", Framework::Cargo),
    ("axum", Framework::Cargo),
    ("rocket", Framework::Cargo),
    ("gin", Framework::Go),
    ("echo", Framework::Go),
    ("fiber", Framework::Go),
];

/// What `auto` runs: the first toolchain whose files the source has, announced last (so the
/// output's tail keeps it) as `taskhost-build: framework=<name>`.
const DETECT: &str = r#"fw=none
trap 'echo "taskhost-build: framework=$fw"' EXIT
if [ -f Cargo.toml ]; then fw=cargo; cargo build --all-targets && cargo test
elif [ -f package.json ]; then fw=npm; npm install --no-audit --no-fund && npm test
elif [ -f go.mod ]; then fw=go; go build ./... && go test -v ./...
elif [ -f pyproject.toml ] || [ -f setup.py ] || [ -f pytest.ini ] || [ -d tests ] || ls test_*.py >/dev/null 2>&1; then fw=pytest; python3 -m pytest -ra
elif [ -f Makefile ]; then fw=make; make && make test
else echo "no Cargo.toml, package.json, go.mod, Python tests or Makefile in $(pwd)" >&2; exit 2
fi"#;

/// The toolchain `auto` chose, from the output of its step.
pub fn detected(output: &str) -> Option<Framework> {
    output
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("taskhost-build: framework="))
        .and_then(Framework::parse)
        .filter(|f| *f != Framework::Auto)
}

impl Framework {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "cargo" => Self::Cargo,
            "npm" => Self::Npm,
            "pytest" => Self::Pytest,
            "go" => Self::Go,
            "make" => Self::Make,
            "steps" => Self::Steps,
            "auto" => Self::Auto,
            _ => return None,
        })
    }

    /// A toolchain or an application framework's toolchain.
    pub fn from_client(name: &str) -> Option<Self> {
        Self::parse(name).or_else(|| {
            APPLICATION_FRAMEWORKS
                .iter()
                .find(|(app, _)| *app == name)
                .map(|(_, toolchain)| *toolchain)
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cargo => "cargo",
            Self::Npm => "npm",
            Self::Pytest => "pytest",
            Self::Go => "go",
            Self::Make => "make",
            Self::Steps => "steps",
            Self::Auto => "auto",
        }
    }

    pub fn default_labels(self) -> Vec<String> {
        let label = match self {
            Self::Cargo => "rust",
            Self::Npm => "node",
            Self::Pytest => "python",
            Self::Go => "go",
            Self::Make => "make",
            Self::Steps | Self::Auto => return Vec::new(),
        };
        vec![label.to_owned()]
    }

    pub fn summary_format(self) -> Format {
        match self {
            Self::Cargo => Format::Cargo,
            Self::Npm => Format::Npm,
            Self::Pytest => Format::Pytest,
            Self::Go => Format::Go,
            Self::Make | Self::Steps | Self::Auto => Format::Any,
        }
    }
}

fn argv(parts: &[&str], extra: &[String]) -> Vec<String> {
    parts
        .iter()
        .map(|p| (*p).to_owned())
        .chain(extra.iter().cloned())
        .collect()
}

fn step(name: &str, command: Vec<String>, timeout_s: Option<u32>) -> JobStep {
    JobStep {
        name: name.to_owned(),
        command,
        timeout_s,
    }
}

/// The steps for `framework`, and the name of the step whose output holds the test summary
/// (`None`: look at every step).
pub fn plan(
    framework: Framework,
    parameters: &Value,
) -> Result<(Vec<JobStep>, Option<&'static str>), TaskError> {
    let args = string_list(&parameters["test_args"]);
    let test_timeout = parameters["test_timeout_s"]
        .as_u64()
        .and_then(|t| u32::try_from(t).ok());
    let coverage = parameters["coverage"].as_bool().unwrap_or(false);
    let mut steps = runners::steps_from(&parameters["setup"], "parameters.setup")?;
    let test_step = match framework {
        Framework::Cargo => {
            steps.push(step(
                "build",
                argv(&["cargo", "build", "--all-targets"], &[]),
                None,
            ));
            steps.push(step("test", argv(&["cargo", "test"], &args), test_timeout));
            Some("test")
        }
        Framework::Npm => {
            steps.push(step(
                "install",
                argv(&["npm", "install", "--no-audit", "--no-fund"], &[]),
                None,
            ));
            let mut test = vec!["npm".to_owned(), "test".to_owned()];
            if !args.is_empty() {
                test.push("--".to_owned());
                test.extend(args);
            }
            steps.push(step("test", test, test_timeout));
            Some("test")
        }
        Framework::Pytest => {
            let mut test = argv(&["python3", "-m", "pytest", "-ra"], &[]);
            if coverage {
                test.extend(["--cov=.".to_owned(), "--cov-report=term".to_owned()]);
            }
            test.extend(args);
            steps.push(step("test", test, test_timeout));
            Some("test")
        }
        Framework::Go => {
            steps.push(step("build", argv(&["go", "build", "./..."], &[]), None));
            let mut test = argv(&["go", "test", "-v"], &[]);
            if coverage {
                test.push("-cover".to_owned());
            }
            test.push("./...".to_owned());
            test.extend(args);
            steps.push(step("test", test, test_timeout));
            Some("test")
        }
        Framework::Make => {
            steps.push(step("build", argv(&["make"], &[]), None));
            steps.push(step("test", argv(&["make", "test"], &args), test_timeout));
            Some("test")
        }
        Framework::Steps => {
            let given = runners::steps_from(&parameters["steps"], "parameters.steps")?;
            if given.is_empty() {
                return Err(TaskError::invalid_input(
                    "framework \"steps\" needs parameters.steps",
                ));
            }
            steps.extend(given);
            None
        }
        Framework::Auto => {
            steps.push(step("test", argv(&["sh", "-c", DETECT], &[]), test_timeout));
            Some("test")
        }
    };
    Ok((steps, test_step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskhost_plugin_sdk::json;

    #[test]
    fn an_application_framework_builds_with_its_toolchain_and_none_detects_on_the_runner() {
        assert_eq!(Framework::from_client("fastapi"), Some(Framework::Pytest));
        assert_eq!(Framework::from_client("axum"), Some(Framework::Cargo));
        assert_eq!(Framework::from_client("cargo"), Some(Framework::Cargo));
        assert_eq!(Framework::from_client("cobol"), None);
        let (steps, test_step) = plan(Framework::Auto, &json!({})).expect("planned");
        assert_eq!((steps.len(), test_step), (1, Some("test")));
        assert_eq!(steps[0].command[..2], ["sh".to_owned(), "-c".to_owned()]);
        assert!(Framework::Auto.default_labels().is_empty(), "any runner");
    }

    #[test]
    fn the_detected_toolchain_is_read_from_the_last_announcement() {
        let output = "===== 3 passed in 0.02s =====\ntaskhost-build: framework=pytest\n";
        assert_eq!(detected(output), Some(Framework::Pytest));
        assert_eq!(detected("taskhost-build: framework=none\n"), None);
        assert_eq!(detected("no announcement"), None);
    }
}

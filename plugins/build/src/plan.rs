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
//!
//! `setup` steps run before the planned ones; `labels` replaces the default label.

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
}

pub const FRAMEWORKS: &[&str] = &["cargo", "npm", "pytest", "go", "make", "steps"];

impl Framework {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "cargo" => Self::Cargo,
            "npm" => Self::Npm,
            "pytest" => Self::Pytest,
            "go" => Self::Go,
            "make" => Self::Make,
            "steps" => Self::Steps,
            _ => return None,
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
        }
    }

    pub fn default_labels(self) -> Vec<String> {
        let label = match self {
            Self::Cargo => "rust",
            Self::Npm => "node",
            Self::Pytest => "python",
            Self::Go => "go",
            Self::Make => "make",
            Self::Steps => return Vec::new(),
        };
        vec![label.to_owned()]
    }

    pub fn summary_format(self) -> Format {
        match self {
            Self::Cargo => Format::Cargo,
            Self::Npm => Format::Npm,
            Self::Pytest => Format::Pytest,
            Self::Go => Format::Go,
            Self::Make | Self::Steps => Format::Any,
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
    };
    Ok((steps, test_step))
}

//! Test summaries read from the end of a step's output. Each test tool prints a different
//! summary; these are the lines each one prints at the end of a run, so they survive in the
//! output tail the runner keeps (the last 64 KiB of a step):
//!
//! - cargo (libtest): `test result: ok. 3 passed; 1 failed; 2 ignored; …` once per test
//!   binary (unit, integration, doc tests); the lines are summed.
//! - pytest: `=== 3 passed, 1 failed, 2 skipped in 0.12s ===` (with or without the `=`
//!   rulers); `error`/`errors` count as failed, `xfailed` as skipped, `xpassed` as passed.
//! - go test -v: one `--- PASS:`/`--- FAIL:`/`--- SKIP:` line per test and subtest.
//! - npm: Jest/Vitest `Tests:  1 failed, 3 passed, 4 total`, Mocha `3 passing` / `1 failing`
//!   / `2 pending`, node:test and TAP `# pass 3` / `# fail 1` / `# skipped 2` (node:test's
//!   `# cancelled` counts as failed).
//!
//! Coverage: pytest-cov's `TOTAL … 87%`, `go test -cover`'s `coverage: 85.0% of statements`
//! (the mean over packages), Jest's `All files | 87.5 |` and cargo-llvm-cov/tarpaulin's
//! `TOTAL … 87.50%` / `87.50% coverage`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl TestCounts {
    pub fn total(&self) -> u64 {
        self.passed + self.failed + self.skipped
    }

    pub fn add(&mut self, other: TestCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

/// Which summary formats to look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Cargo,
    Pytest,
    Go,
    Npm,
    /// Make or explicit steps: whichever format the output turns out to have.
    Any,
}

/// The counts the output reports, if it holds a summary.
pub fn tests(format: Format, output: &str) -> Option<TestCounts> {
    match format {
        Format::Cargo => cargo(output),
        Format::Pytest => pytest(output),
        Format::Go => go(output),
        Format::Npm => npm(output),
        Format::Any => cargo(output)
            .or_else(|| pytest(output))
            .or_else(|| go(output))
            .or_else(|| npm(output)),
    }
}

/// `<number> <word>` pairs in a comma- or semicolon-separated list.
fn counted(text: &str) -> Vec<(u64, String)> {
    text.split([',', ';'])
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            let number = words.next()?.parse().ok()?;
            let word = words.next()?.trim_end_matches('.').to_ascii_lowercase();
            Some((number, word))
        })
        .collect()
}

fn cargo(output: &str) -> Option<TestCounts> {
    let mut total: Option<TestCounts> = None;
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        // "ok. 3 passed; 0 failed; …" or "FAILED. 2 passed; 1 failed; …"
        let Some((_, counts)) = rest.split_once(". ") else {
            continue;
        };
        let mut found = TestCounts::default();
        for (n, word) in counted(counts) {
            match word.as_str() {
                "passed" => found.passed += n,
                "failed" => found.failed += n,
                "ignored" => found.skipped += n,
                _ => {}
            }
        }
        total.get_or_insert_with(TestCounts::default).add(found);
    }
    total
}

fn pytest(output: &str) -> Option<TestCounts> {
    // The last summary line wins (a rerun plugin may print more than one).
    output.lines().rev().find_map(|line| {
        let line = line.trim().trim_matches('=').trim();
        let (counts, timing) = line.rsplit_once(" in ")?;
        let timing = timing.trim();
        if !timing.ends_with('s') && !timing.contains("s (") {
            return None;
        }
        let mut found = TestCounts::default();
        let mut any = false;
        for (n, word) in counted(counts) {
            any = true;
            match word.as_str() {
                "passed" | "xpassed" => found.passed += n,
                "failed" | "error" | "errors" => found.failed += n,
                "skipped" | "xfailed" | "deselected" => found.skipped += n,
                "warning" | "warnings" | "rerun" => {}
                _ => return None,
            }
        }
        any.then_some(found)
    })
}

fn go(output: &str) -> Option<TestCounts> {
    let mut found = TestCounts::default();
    let mut any = false;
    for line in output.lines() {
        let line = line.trim_start();
        if line.starts_with("--- PASS: ") {
            found.passed += 1;
        } else if line.starts_with("--- FAIL: ") {
            found.failed += 1;
        } else if line.starts_with("--- SKIP: ") {
            found.skipped += 1;
        } else {
            continue;
        }
        any = true;
    }
    any.then_some(found)
}

fn npm(output: &str) -> Option<TestCounts> {
    // Jest / Vitest: "Tests:       1 failed, 3 passed, 4 total" / "Tests  3 passed (3)".
    let jest = output.lines().rev().find_map(|line| {
        let rest = line.trim().strip_prefix("Tests")?;
        let rest = rest.trim_start_matches(':').trim();
        let mut found = TestCounts::default();
        let mut any = false;
        for (n, word) in counted(rest) {
            match word.as_str() {
                "passed" => found.passed += n,
                "failed" => found.failed += n,
                "skipped" | "todo" | "pending" => found.skipped += n,
                _ => continue,
            }
            any = true;
        }
        any.then_some(found)
    });
    if jest.is_some() {
        return jest;
    }
    // Mocha and node:test / TAP.
    let mut found = TestCounts::default();
    let mut any = false;
    for line in output.lines() {
        let line = line.trim();
        let (number, word) = match line.strip_prefix("# ") {
            Some(tap) => match tap.split_once(' ') {
                Some((word, number)) => (number.trim(), word),
                None => continue,
            },
            None => match line.split_once(' ') {
                Some((number, word)) => (number, word.split_whitespace().next().unwrap_or("")),
                None => continue,
            },
        };
        let Ok(n) = number.parse::<u64>() else {
            continue;
        };
        match word {
            "passing" | "pass" => found.passed += n,
            "failing" | "fail" | "cancelled" => found.failed += n,
            "pending" | "skip" | "skipped" | "todo" => found.skipped += n,
            _ => continue,
        }
        any = true;
    }
    any.then_some(found)
}

fn percent(text: &str) -> Option<f64> {
    let value: f64 = text.trim().trim_end_matches('%').parse().ok()?;
    (0.0..=100.0).contains(&value).then_some(value)
}

/// Line or statement coverage in percent, if the output reports it.
pub fn coverage(output: &str) -> Option<f64> {
    let mut go_packages = Vec::new();
    for line in output.lines().rev() {
        let line = line.trim();
        // pytest-cov, cargo-llvm-cov: "TOTAL   120   15   87%" (last column).
        if line.starts_with("TOTAL ")
            && let Some(value) = line.split_whitespace().last().and_then(percent)
        {
            return Some(value);
        }
        // Jest: "All files |   87.5 |  …"
        if let Some(rest) = line.strip_prefix("All files")
            && let Some(value) = rest.split('|').nth(1).and_then(percent)
        {
            return Some(value);
        }
        // tarpaulin: "87.50% coverage, 70/80 lines covered"
        if let Some((value, _)) = line.split_once("% coverage")
            && let Some(value) = value.split_whitespace().last().and_then(percent)
        {
            return Some(value);
        }
        if let Some((_, rest)) = line.split_once("coverage: ")
            && let Some((value, _)) = rest.split_once("% of statements")
            && let Some(value) = percent(value)
        {
            go_packages.push(value);
        }
    }
    if go_packages.is_empty() {
        None
    } else {
        Some(go_packages.iter().sum::<f64>() / go_packages.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(passed: u64, failed: u64, skipped: u64) -> Option<TestCounts> {
        Some(TestCounts {
            passed,
            failed,
            skipped,
        })
    }

    #[test]
    fn cargo_sums_every_test_binary() {
        let output = "running 2 tests\ntest a ... ok\ntest b ... ignored\n\ntest result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
             running 3 tests\ntest result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
             test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n";
        assert_eq!(tests(Format::Cargo, output), counts(3, 1, 1));
        assert_eq!(tests(Format::Cargo, "error[E0308]: mismatched types"), None);
    }

    #[test]
    fn pytest_reads_the_final_summary() {
        let output = "tests/test_a.py ..F.s\n=========== 3 passed, 1 failed, 1 skipped, 2 warnings in 0.12s ===========\n";
        assert_eq!(tests(Format::Pytest, output), counts(3, 1, 1));
        assert_eq!(tests(Format::Pytest, "4 passed in 0.03s"), counts(4, 0, 0));
        assert_eq!(
            tests(Format::Pytest, "== 1 failed, 2 errors in 1.50s =="),
            counts(0, 3, 0)
        );
        assert_eq!(tests(Format::Pytest, "checked in 3s"), None);
    }

    #[test]
    fn go_counts_tests_and_subtests() {
        let output = "=== RUN   TestA\n--- PASS: TestA (0.00s)\n=== RUN   TestB\n    --- FAIL: TestB/sub (0.00s)\n--- FAIL: TestB (0.00s)\n--- SKIP: TestC (0.00s)\nFAIL\n";
        assert_eq!(tests(Format::Go, output), counts(1, 2, 1));
    }

    #[test]
    fn npm_reads_jest_mocha_and_tap() {
        assert_eq!(
            tests(
                Format::Npm,
                "Tests:       1 failed, 3 passed, 4 total\nTime: 1s"
            ),
            counts(3, 1, 0)
        );
        assert_eq!(
            tests(
                Format::Npm,
                "  5 passing (12ms)\n  2 pending\n  1 failing\n"
            ),
            counts(5, 1, 2)
        );
        assert_eq!(
            tests(Format::Npm, "# tests 4\n# pass 3\n# fail 1\n# skipped 0\n"),
            counts(3, 1, 0)
        );
        assert_eq!(
            tests(
                Format::Npm,
                "1..4\n# tests 4\n# suites 0\n# pass 2\n# fail 0\n# cancelled 1\n# skipped 1\n# todo 0\n"
            ),
            counts(2, 1, 1)
        );
        assert_eq!(tests(Format::Any, "# pass 2\n"), counts(2, 0, 0));
    }

    #[test]
    fn coverage_from_each_tool() {
        assert_eq!(
            coverage("Name  Stmts Miss Cover\nTOTAL   120   15   87%\n"),
            Some(87.0)
        );
        assert_eq!(
            coverage("All files |   87.5 |   80 |   90 |   87.5 |\n"),
            Some(87.5)
        );
        assert_eq!(
            coverage("87.50% coverage, 70/80 lines covered\n"),
            Some(87.5)
        );
        assert_eq!(
            coverage(
                "ok a 0.1s coverage: 80.0% of statements\nok b 0.1s coverage: 90.0% of statements\n"
            ),
            Some(85.0)
        );
        assert_eq!(coverage("3 passed in 0.01s"), None);
    }
}

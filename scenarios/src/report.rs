//! How scenarios and benchmarks print what happened: percentile statistics, aligned tables, and
//! PASS/FAIL step lines with a summary table at the end ([`Steps`], [`Report`]).

use std::time::{Duration, Instant};

/// Summary statistics of a sample (values in whatever unit the caller measured).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    /// Nearest-rank percentiles; an empty sample gives zeros.
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v: Vec<f64> = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| {
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Self {
            n: v.len(),
            min: v[0],
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// A plain-text table with left-aligned columns.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: &[String]) {
        self.rows.push(cells.to_vec());
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map(|x| x.chars().count()).unwrap_or(0))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, cell)| format!("{cell:<w$}", w = widths[c]))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
            if i == 0 {
                let total: usize = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        out
    }
}

/// One checked step of a scenario.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub name: String,
    pub passed: bool,
    /// What was seen (several lines allowed).
    pub detail: String,
    /// Since the start of the scenario.
    pub at: Duration,
}

/// A step failed and the scenario cannot go on: it was recorded; stop here.
#[derive(Debug)]
pub struct Aborted(pub String);

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step failed: {}", self.0)
    }
}

impl std::error::Error for Aborted {}

/// The steps of a scenario: each is printed (PASS/FAIL, time, detail) as soon as it is known, and
/// [`Steps::finish`] gives the [`Report`] with its summary table.
pub struct Steps {
    title: String,
    started: Instant,
    results: Vec<StepResult>,
    /// Print steps as they happen (off in library use that only wants the report).
    echo: bool,
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Steps {
    pub fn new(title: &str) -> Self {
        println!("== {title} ==");
        Self {
            title: title.to_string(),
            started: Instant::now(),
            results: Vec::new(),
            echo: true,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn push(&mut self, name: &str, passed: bool, detail: String) {
        let at = self.started.elapsed();
        if self.echo {
            let mark = if passed { "PASS" } else { "FAIL" };
            println!("[{:>6.1}s] {mark}  {name}", at.as_secs_f64());
            if !detail.is_empty() {
                println!("{}", indent(&detail, "                "));
            }
        }
        self.results.push(StepResult {
            name: name.to_string(),
            passed,
            detail,
            at,
        });
    }

    /// Information that is not a check (where a process listens, what comes next).
    pub fn note(&self, text: &str) {
        if self.echo {
            println!("{}", indent(text, "          "));
        }
    }

    pub fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, true, detail.into());
    }

    pub fn fail(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, false, detail.into());
    }

    /// Records `result` (its `Ok` text is the detail) and says whether it passed.
    pub fn check(&mut self, name: &str, result: Result<String, anyhow::Error>) -> bool {
        match result {
            Ok(detail) => {
                self.pass(name, detail);
                true
            }
            Err(e) => {
                self.fail(name, format!("{e:#}"));
                false
            }
        }
    }

    /// Like [`Steps::check`] for a step the rest depends on: a failure ends the scenario
    /// (`Err(Aborted)`, to be propagated with `?`).
    pub fn must<T>(
        &mut self,
        name: &str,
        result: Result<(T, String), anyhow::Error>,
    ) -> Result<T, anyhow::Error> {
        match result {
            Ok((v, detail)) => {
                self.pass(name, detail);
                Ok(v)
            }
            Err(e) => {
                self.fail(name, format!("{e:#}"));
                Err(Aborted(name.to_string()).into())
            }
        }
    }

    /// Ends the scenario. An error that is not [`Aborted`] (setup went wrong outside any step)
    /// is recorded as a failed step of its own.
    pub fn finish(mut self, outcome: Result<(), anyhow::Error>) -> Report {
        if let Err(e) = outcome
            && !e.is::<Aborted>()
        {
            self.fail("scenario", format!("{e:#}"));
        }
        if self.results.is_empty() {
            self.fail("scenario", "no step ran");
        }
        Report {
            title: self.title,
            steps: self.results,
            elapsed: self.started.elapsed(),
        }
    }
}

/// The outcome of a scenario.
#[derive(Debug, Clone)]
pub struct Report {
    pub title: String,
    pub steps: Vec<StepResult>,
    pub elapsed: Duration,
}

/// Longest detail shown in a summary table cell.
const SUMMARY_DETAIL: usize = 120;

impl Report {
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.passed)
    }

    pub fn failures(&self) -> Vec<&StepResult> {
        self.steps.iter().filter(|s| !s.passed).collect()
    }

    /// The first step whose name starts with `prefix`, if it ran.
    pub fn step(&self, prefix: &str) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.name.starts_with(prefix))
    }

    /// The summary table (step, PASS/FAIL, first line of the detail) and the verdict.
    pub fn summary(&self) -> String {
        let mut t = Table::new(&["#", "step", "result", "detail"]);
        for (i, s) in self.steps.iter().enumerate() {
            let first = s.detail.lines().next().unwrap_or("");
            let detail = if first.chars().count() > SUMMARY_DETAIL {
                let cut: String = first.chars().take(SUMMARY_DETAIL - 1).collect();
                format!("{cut}…")
            } else {
                first.to_string()
            };
            t.row(&[
                (i + 1).to_string(),
                s.name.clone(),
                if s.passed { "PASS" } else { "FAIL" }.to_string(),
                detail,
            ]);
        }
        let failed = self.failures().len();
        let verdict = if failed == 0 {
            format!(
                "{}: all {} steps passed in {:.1}s",
                self.title,
                self.steps.len(),
                self.elapsed.as_secs_f64()
            )
        } else {
            format!(
                "{}: {failed} of {} steps FAILED ({:.1}s)",
                self.title,
                self.steps.len(),
                self.elapsed.as_secs_f64()
            )
        };
        format!("{}{verdict}\n", t.render())
    }

    /// Exit code of a scenario command: 0 when every step passed, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.passed() { 0 } else { 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v);
        assert_eq!(
            (s.min, s.p50, s.p90, s.p99, s.max),
            (1.0, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Stats::of(&[]).n, 0);
        assert_eq!(Stats::of(&[7.0]).p99, 7.0);
    }

    #[test]
    fn steps_report_and_abort() {
        let mut steps = Steps::new("t");
        steps.pass("one", "ok");
        assert!(steps.check("two", Ok("fine".into())));
        let r: anyhow::Result<()> = (|| {
            steps.must::<()>("three", Err(anyhow::anyhow!("broken\nmore")))?;
            unreachable!()
        })();
        let report = steps.finish(r);
        assert!(!report.passed());
        assert_eq!(report.steps.len(), 3, "an abort is not recorded twice");
        assert_eq!(report.exit_code(), 1);
        let s = report.summary();
        let row = s.lines().find(|l| l.contains("three")).unwrap();
        assert!(row.contains("FAIL") && row.ends_with("broken"), "{s}");
        assert!(!s.contains("more"), "{s}");
        assert!(s.contains("1 of 3 steps FAILED"), "{s}");
    }

    #[test]
    fn setup_errors_are_a_failed_step() {
        let steps = Steps::new("t");
        let report = steps.finish(Err(anyhow::anyhow!("no OpenBao")));
        assert_eq!(report.steps.len(), 1);
        assert!(!report.passed());
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["a", "bb"]);
        t.row(&["ccc".into(), "d".into()]);
        assert_eq!(t.render(), "a    bb\n-------\nccc  d\n");
    }
}

//! How a [`View`] looks: as sections of rows (pure), drawn by ratatui in the terminal or
//! printed as plain text by `--once`, so both show the same thing.

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

use super::view::{Counter, View};

/// Shown where a value is missing: the metric is not exported (yet), or there is no rate on
/// the first scrape.
const NONE: &str = "-";

/// A titled block of rows of three cells: what, value or rate, total or detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub title: String,
    pub rows: Vec<[String; 3]>,
}

/// Everything on the screen besides the sections.
#[derive(Debug, Clone)]
pub struct Screen<'a> {
    pub url: &'a str,
    /// The last scrape's failure; the view is then the last good one, if any.
    pub error: Option<&'a str>,
    pub view: Option<&'a View>,
}

pub fn sections(v: &View) -> [Section; 6] {
    let counter_row = |what: &str, c: &Counter| [what.to_string(), rate(c), total(c)];
    let mut rejections: Vec<[String; 3]> = v
        .rejections
        .iter()
        .map(|(reason, c)| counter_row(reason, c))
        .collect();
    if rejections.is_empty() {
        rejections.push(["none".into(), String::new(), String::new()]);
    }
    let window = match v.interval {
        Some(i) => format!("over {}", seconds(i)),
        None => "waiting for a second scrape".to_string(),
    };
    [
        Section {
            title: format!("Throughput, {window}"),
            rows: vec![
                counter_row("messages in", &v.messages_in),
                counter_row("readings stored", &v.stored),
                counter_row("readings duplicate", &v.duplicate),
                counter_row("readings corrected", &v.corrected),
                counter_row("readings rejected", &v.rejected),
                counter_row("messages isolated", &v.isolated),
            ],
        },
        Section {
            title: "Rejections by reason".into(),
            rows: rejections,
        },
        Section {
            title: format!("Latency, receipt to commit, {window}"),
            rows: vec![
                ["p50".into(), latency(v.latency_p50), String::new()],
                ["p99".into(), latency(v.latency_p99), String::new()],
            ],
        },
        Section {
            title: "Buffers".into(),
            rows: vec![
                [
                    "readings buffered".into(),
                    count(v.buffered_readings),
                    String::new(),
                ],
                [
                    "bytes buffered".into(),
                    bytes(v.buffered_bytes),
                    String::new(),
                ],
                ["messages unacked".into(), count(v.unacked), String::new()],
            ],
        },
        Section {
            title: "Broker and database".into(),
            rows: vec![
                [
                    "mqtt".into(),
                    match v.connected {
                        Some(true) => "connected".into(),
                        Some(false) => "DISCONNECTED".into(),
                        None => NONE.into(),
                    },
                    format!("reconnects {}", plain_total(&v.reconnects)),
                ],
                counter_row("database errors", &v.db_errors),
            ],
        },
        Section {
            title: "Process".into(),
            rows: vec![["resident memory".into(), bytes(v.rss_bytes), String::new()]],
        },
    ]
}

/// `--once`: the header line and every section, one row a line, columns aligned.
pub fn plain(url: &str, v: &View) -> String {
    let mut out = format!("enalysis-ingest top: {url}\n");
    for s in sections(v) {
        out.push('\n');
        out.push_str(&s.title);
        out.push('\n');
        for [what, value, detail] in &s.rows {
            let line = format!("  {what:<22}{value:>14}  {detail}");
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// The terminal view: a header, the sections in two columns, a footer.
pub fn draw(frame: &mut Frame, screen: &Screen) {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let mut title = vec![
        Span::styled(
            "enalysis-ingest top ",
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(screen.url.to_string()),
    ];
    if let Some(e) = screen.error {
        title.push(Span::styled(
            format!("  scrape failed: {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(title)), header);
    frame.render_widget(
        Paragraph::new("q, Esc or Ctrl-C: quit · refreshed every second")
            .style(Style::default().add_modifier(Modifier::DIM)),
        footer,
    );

    let Some(view) = screen.view else {
        frame.render_widget(Paragraph::new("waiting for the first scrape…"), body);
        return;
    };
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
    let [throughput, rejections, latency, buffers, health, process] = sections(view);
    stack(frame, left, [throughput, rejections].as_slice());
    stack(frame, right, [latency, buffers, health, process].as_slice());
}

/// Sections one under the other, each as tall as its rows (the last one takes the rest).
fn stack(frame: &mut Frame, area: Rect, sections: &[Section]) {
    let heights = sections.iter().enumerate().map(|(i, s)| {
        let h = s.rows.len() as u16 + 2;
        if i + 1 == sections.len() {
            Constraint::Min(h)
        } else {
            Constraint::Length(h)
        }
    });
    let areas = Layout::vertical(heights).split(area);
    for (s, area) in sections.iter().zip(areas.iter()) {
        let warn = |cell: &str| cell == "DISCONNECTED";
        let rows = s.rows.iter().map(|cells| {
            let style = if cells.iter().any(|c| warn(c)) {
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            let [what, value, detail] = cells.clone();
            Row::new([
                Cell::from(what),
                Cell::from(Line::from(value).right_aligned()),
                Cell::from(detail),
            ])
            .style(style)
        });
        let table = Table::new(
            rows,
            [
                Constraint::Length(20),
                Constraint::Length(12),
                Constraint::Min(12),
            ],
        )
        .column_spacing(2)
        .block(Block::bordered().title(format!(" {} ", s.title)));
        frame.render_widget(table, *area);
    }
}

fn rate(c: &Counter) -> String {
    c.per_sec.map_or(NONE.into(), |r| format!("{r:.1}/s"))
}

fn total(c: &Counter) -> String {
    format!("total {}", plain_total(c))
}

fn plain_total(c: &Counter) -> String {
    c.total.map_or(NONE.into(), number)
}

fn count(v: Option<f64>) -> String {
    v.map_or(NONE.into(), number)
}

/// Whole numbers without decimals (counters and gauges of things are integers).
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn latency(v: Option<f64>) -> String {
    match v {
        None => "no commit".into(),
        Some(s) if s < 0.01 => format!("{:.1} ms", s * 1000.0),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
    }
}

fn bytes(v: Option<f64>) -> String {
    let Some(n) = v else {
        return NONE.into();
    };
    if n.abs() < 1024.0 {
        return format!("{n:.0} B");
    }
    let (mut n, mut unit) = (n / 1024.0, "KiB");
    for next in ["MiB", "GiB"] {
        if n.abs() < 1024.0 {
            break;
        }
        n /= 1024.0;
        unit = next;
    }
    format!("{n:.1} {unit}")
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::top::exposition::parse;
    use crate::top::view::Scrape;

    /// Two scrapes of a real daemon's `/metrics`, 1 s apart, while `enalysis-ingest simulate
    /// --rate 800 --per-message 4 --invalid-share 0.03` published to it.
    const BEFORE: &str = include_str!("testdata/metrics-before.txt");
    const AFTER: &str = include_str!("testdata/metrics-after.txt");

    fn recorded_view() -> View {
        let t0 = Instant::now();
        let scrape = |at, text| Scrape {
            at,
            metrics: parse(text).expect("the recorded exposition parses"),
        };
        View::new(
            Some(&scrape(t0, BEFORE)),
            &scrape(t0 + Duration::from_secs(1), AFTER),
        )
    }

    fn rendered(screen: &Screen, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        terminal.draw(|f| draw(f, screen)).expect("draw");
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn the_full_view_of_a_recorded_snapshot_shows_every_figure() {
        let view = recorded_view();
        let screen = Screen {
            url: "http://127.0.0.1:9464/metrics",
            error: None,
            view: Some(&view),
        };
        let lines = rendered(&screen, 110, 30);
        let text = lines.join("\n");
        let has = |needle: &str| {
            assert!(text.contains(needle), "{needle:?} not on screen:\n{text}");
        };
        has("enalysis-ingest top http://127.0.0.1:9464/metrics");
        has("Throughput, over 1.0 s");
        has("Rejections by reason");
        has("Latency, receipt to commit, over 1.0 s");
        has("q, Esc or Ctrl-C: quit");
        // The figures of the recording, worked out from the two files by hand (deltas over
        // the second between them; latency from the buckets' deltas, 9 commits all in
        // (0.1, 0.125] s).
        for row in [
            ["messages in", "816.0/s", "total 2793"],
            ["readings stored", "11028.0/s", "total 36792"],
            ["readings duplicate", "0.0/s", "total 0"],
            ["readings rejected", "24.0/s", "total 83"],
            ["messages isolated", "0.0/s", "total 0"],
            ["invalid_timestamp", "2.0/s", "total 7"],
            ["stale_timestamp", "1.0/s", "total 6"],
            ["p50", "112 ms", ""],
            ["p99", "125 ms", ""],
            ["readings buffered", "1094", ""],
            ["bytes buffered", "157.4 KiB", ""],
            ["messages unacked", "80", ""],
            ["mqtt", "connected", "reconnects 0"],
            ["database errors", "0.0/s", "total 0"],
            ["resident memory", "33.7 MiB", ""],
        ] {
            // The row's own cells: from its label to the border of its block.
            let cells = lines
                .iter()
                .find_map(|l| l.split_once(row[0]).map(|(_, rest)| rest))
                .and_then(|rest| rest.split('│').next())
                .unwrap_or_else(|| panic!("no row {:?}:\n{text}", row[0]));
            let value_then_detail = cells
                .split_once(row[1])
                .is_some_and(|(_, after)| after.contains(row[2]));
            assert!(value_then_detail, "row {row:?}: {cells:?}");
        }
    }

    #[test]
    fn a_failed_scrape_is_shown_above_the_last_good_view() {
        let view = recorded_view();
        let screen = Screen {
            url: "http://127.0.0.1:9464/metrics",
            error: Some("cannot connect to 127.0.0.1:9464: Connection refused"),
            view: Some(&view),
        };
        let lines = rendered(&screen, 140, 24);
        assert!(
            lines[0].contains("scrape failed: cannot connect to 127.0.0.1:9464"),
            "{}",
            lines[0]
        );
        assert!(lines.iter().any(|l| l.contains("readings stored")));
        let waiting = rendered(
            &Screen {
                url: "u",
                error: None,
                view: None,
            },
            60,
            5,
        );
        assert!(waiting[1].contains("waiting for the first scrape"));
    }

    #[test]
    fn plain_text_has_one_aligned_line_per_row() {
        let text = plain("http://127.0.0.1:9464/metrics", &recorded_view());
        assert!(text.starts_with("enalysis-ingest top: http://127.0.0.1:9464/metrics\n"));
        assert!(text.contains("\nThroughput, over 1.0 s\n"), "{text}");
        assert!(!text.lines().any(|l| l.ends_with(' ')), "{text}");
    }

    #[test]
    fn values_are_formatted_for_people() {
        for (v, s) in [
            (Some(0.0), "0 B"),
            (Some(1023.0), "1023 B"),
            (Some(1536.0), "1.5 KiB"),
            (Some(67_108_864.0), "64.0 MiB"),
            (Some(5.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0), "5120.0 GiB"),
            (None, "-"),
        ] {
            assert_eq!(bytes(v), s);
        }
        for (v, s) in [
            (Some(0.0025), "2.5 ms"),
            (Some(0.125), "125 ms"),
            (Some(2.5), "2.50 s"),
            (None, "no commit"),
        ] {
            assert_eq!(latency(v), s);
        }
        assert_eq!(number(42.0), "42");
        assert_eq!(number(0.5), "0.50");
    }
}

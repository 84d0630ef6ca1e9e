//! `enalysis-ingest top`: a terminal view of a running daemon, from its `/metrics`.
//!
//! [`scrape`] GETs and parses ([`exposition`]) the metrics every second, [`view`] turns two
//! scrapes into rates and latency quantiles over the second between them, [`render`] draws
//! them with ratatui (crossterm backend), or prints them once as plain text.

mod exposition;
mod render;
mod scrape;
mod view;

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::config::Config;
use scrape::Target;
use view::{Scrape, View};

/// How often the view refreshes, and the interval `--once` measures rates over.
const REFRESH: Duration = Duration::from_secs(1);
/// One scrape may take this long; the view then shows the failure and tries again.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The daemon's HTTP listener; `/metrics` is added when the URL has no path [default:
    /// http://<http.addr of the configuration>, so http://127.0.0.1:9464 by default].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Print one plain-text snapshot and exit: two scrapes 1 s apart, rates and latency over
    /// that second, gauges and totals as of the second scrape.
    #[arg(long)]
    pub once: bool,
}

pub async fn run(config: &Config, args: TopArgs) -> anyhow::Result<()> {
    let url = match args.url {
        Some(url) => url,
        None => default_url(config.http.addr),
    };
    let target = Target::parse(&url).context("--url")?;
    if args.once {
        return once(&target).await;
    }
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("top needs a terminal on stdout; use --once for a plain-text snapshot");
    }
    let runtime = tokio::runtime::Handle::current();
    // crossterm's event poll blocks: the view runs on a blocking thread and uses the runtime
    // only for the HTTP requests.
    tokio::task::spawn_blocking(move || interactive(&runtime, &target))
        .await
        .context("the terminal view stopped")?
}

/// `http://` + the listener's address, with an unspecified IP (`0.0.0.0`, `::`) replaced by
/// loopback: a daemon listening everywhere is reachable there.
fn default_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

async fn once(target: &Target) -> anyhow::Result<()> {
    let read = || async {
        scrape::fetch(target, SCRAPE_TIMEOUT)
            .await
            .with_context(|| format!("cannot read {}", target.url))
    };
    let first = read().await?;
    tokio::time::sleep_until((first.at + REFRESH).into()).await;
    let second = read().await?;
    print!(
        "{}",
        render::plain(&target.url, &View::new(Some(&first), &second))
    );
    Ok(())
}

fn interactive(runtime: &tokio::runtime::Handle, target: &Target) -> anyhow::Result<()> {
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            // Raw mode may be on already when entering the alternate screen failed.
            ratatui::restore();
            return Err(e).context("cannot set up the terminal");
        }
    };
    let result = refresh_loop(runtime, target, &mut terminal);
    ratatui::restore();
    result
}

fn refresh_loop(
    runtime: &tokio::runtime::Handle,
    target: &Target,
    terminal: &mut ratatui::DefaultTerminal,
) -> anyhow::Result<()> {
    let mut previous: Option<Scrape> = None;
    let mut view: Option<View> = None;
    loop {
        let started = Instant::now();
        // A failed scrape keeps the last good view on screen, under the error.
        let error = match runtime.block_on(scrape::fetch(target, SCRAPE_TIMEOUT)) {
            Ok(current) => {
                view = Some(View::new(previous.as_ref(), &current));
                previous = Some(current);
                None
            }
            Err(e) => Some(e.to_string()),
        };
        let next = started + REFRESH;
        loop {
            let screen = render::Screen {
                url: &target.url,
                error: error.as_deref(),
                view: view.as_ref(),
            };
            terminal
                .draw(|frame| render::draw(frame, &screen))
                .context("cannot draw")?;
            // Keys and resizes until the next refresh; a resize redraws at once.
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() || !event::poll(left).context("terminal input")? {
                break;
            }
            match event::read().context("terminal input")? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_is_the_configured_listener_reached_on_loopback() {
        for (addr, url) in [
            ("127.0.0.1:9464", "http://127.0.0.1:9464"),
            ("0.0.0.0:9464", "http://127.0.0.1:9464"),
            ("[::]:9000", "http://[::1]:9000"),
            ("10.1.2.3:80", "http://10.1.2.3:80"),
        ] {
            assert_eq!(default_url(addr.parse().expect(addr)), url);
        }
        // An http.addr that is not IP:PORT never gets here: the configuration refuses it
        // (config::tests::http_addr_is_parsed_as_it_loads).
    }
}

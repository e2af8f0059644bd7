//! `--plot FILE.svg`, drawn with plotters' SVG backend: the latency CDF of
//! a phase (x: latency in ms on a log scale, y: percentile), and a storm's
//! reconnect curve (x: seconds after the drop, y: upgrades per 100 ms).

use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

/// The CDF of `h` (µs): one (latency ms, percentile 0–100) point per
/// recorded bucket, rising. Values below 1 µs are drawn at 1 µs (the log
/// scale has no zero).
pub fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let total = h.len();
    if total == 0 {
        return Vec::new();
    }
    let mut seen = 0u64;
    h.iter_recorded()
        .map(|v| {
            seen += v.count_at_value();
            let ms = (h.highest_equivalent(v.value_iterated_to()) as f64).max(1.0) / 1000.0;
            (ms, seen as f64 * 100.0 / total as f64)
        })
        .collect()
}

/// Renders the CDF as an SVG document.
pub fn cdf_svg(points: &[(f64, f64)], title: &str) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let lo = points.first().map_or(0.001, |p| p.0).max(0.001);
        let hi = points.last().map_or(1.0, |p| p.0).max(lo * 10.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..100.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("latency (ms, log scale)")
            .y_desc("percentile")
            .x_label_formatter(&|v| format!("{}", (v * 1000.0).round() / 1000.0))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Writes the CDF of the hex-encoded histogram `hist` to `path`.
pub fn write_cdf(path: &Path, hist: &str, title: &str) -> Result<usize, String> {
    let h = crate::stats::hist_from_hex(hist)?;
    let points = cdf_points(&h);
    if points.is_empty() {
        return Err("no latencies recorded: nothing to plot".into());
    }
    let svg = cdf_svg(&points, title)?;
    std::fs::write(path, svg).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(points.len())
}

/// Renders counts per bucket (`bucket_s` wide, from time 0, which `x_desc`
/// names) as a step line: two vertices per bucket, so a burst stays as
/// narrow as it was.
pub fn curve_svg(
    counts: &[u32],
    bucket_s: f64,
    title: &str,
    x_desc: &str,
) -> Result<String, String> {
    let steps: Vec<(f64, f64)> = counts
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| {
            let (x0, y) = (i as f64 * bucket_s, f64::from(n));
            [(x0, y), (x0 + bucket_s, y)]
        })
        .collect();
    let x_max = (counts.len() as f64 * bucket_s).max(1.0);
    let y_max = f64::from(counts.iter().copied().max().unwrap_or(0)).max(1.0) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(format!("upgrades per {:.0} ms", bucket_s * 1000.0))
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(steps, BLUE.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Writes the curve of `counts` to `path`; returns the buckets drawn.
pub fn write_curve(
    path: &Path,
    counts: &[u32],
    bucket_s: f64,
    title: &str,
    x_desc: &str,
) -> Result<usize, String> {
    if counts.is_empty() {
        return Err("no upgrades recorded: nothing to plot".into());
    }
    let svg = curve_svg(counts, bucket_s, title, x_desc)?;
    std::fs::write(path, svg).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(counts.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_hist;

    /// Checks that tags nest and close, and returns the element names seen.
    fn well_formed(doc: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = doc.trim();
        if !rest.starts_with("<svg") {
            return Err("does not start with <svg".into());
        }
        // Each turn consumes one tag.
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(top) if top == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            let name = tag
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or_default()
                .to_string();
            if !tag.matches('"').count().is_multiple_of(2) {
                return Err(format!("unbalanced quotes in <{name}>"));
            }
            names.push(name.clone());
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed: {stack:?}"));
        }
        Ok(names)
    }

    #[test]
    fn cdf_rises_to_100() {
        let mut h = new_hist();
        for v in [100u64, 100, 200, 5_000, 80_000] {
            h.record(v).unwrap_or_else(|e| panic!("{e:?}"));
        }
        let p = cdf_points(&h);
        assert_eq!(p.len(), 4);
        assert!((p[0].0 - 0.1).abs() < 0.001 && (p[0].1 - 40.0).abs() < 1e-9);
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert_eq!(p.last().map(|x| x.1), Some(100.0));
        assert!(cdf_points(&new_hist()).is_empty());
    }

    #[test]
    fn svg_is_well_formed_with_one_vertex_per_point() {
        let mut h = new_hist();
        for v in 1..=300u64 {
            h.record(v * 37).unwrap_or_else(|e| panic!("{e:?}"));
        }
        let points = cdf_points(&h);
        assert!(points.len() > 100);
        let svg = cdf_svg(&points, "latency CDF").unwrap_or_else(|e| panic!("{e}"));
        let names = well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(names.iter().any(|n| n == "text"), "axis labels");
        // The curve is the polyline with as many vertices as points.
        let counts: Vec<usize> = svg
            .match_indices("<polyline")
            .filter_map(|(i, _)| {
                let tag = &svg[i..i + svg[i..].find('>')?];
                let pts = tag.split("points=\"").nth(1)?.split('"').next()?;
                Some(pts.split_whitespace().count())
            })
            .collect();
        assert!(
            counts.contains(&points.len()),
            "{counts:?} vs {}",
            points.len()
        );
    }

    /// Vertices of each `<polyline>` in `svg`.
    fn polyline_vertices(svg: &str) -> Vec<usize> {
        svg.match_indices("<polyline")
            .filter_map(|(i, _)| {
                let tag = &svg[i..i + svg[i..].find('>')?];
                let pts = tag.split("points=\"").nth(1)?.split('"').next()?;
                Some(pts.split_whitespace().count())
            })
            .collect()
    }

    #[test]
    fn curve_is_a_step_line_with_two_vertices_per_bucket() {
        let counts = [0, 3, 250, 2529, 40, 0, 7];
        let svg = curve_svg(&counts, 0.1, "storm", "seconds after the drop")
            .unwrap_or_else(|e| panic!("{e}"));
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert!(polyline_vertices(&svg).contains(&(2 * counts.len())));
        assert!(svg.contains("upgrades per 100 ms"));
        assert!(svg.contains("seconds after the drop"));
        let path = std::env::temp_dir().join(format!("swarm-curve-{}.svg", std::process::id()));
        assert!(write_curve(&path, &[], 0.1, "x", "t").is_err());
        assert_eq!(write_curve(&path, &counts, 0.1, "x", "t"), Ok(7));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        assert!(text.contains("</svg>"));
    }

    #[test]
    fn write_cdf_refuses_an_empty_histogram() {
        let dir = std::env::temp_dir().join(format!("swarm-plot-{}.svg", std::process::id()));
        let empty = crate::stats::hist_to_hex(&new_hist());
        assert!(write_cdf(&dir, &empty, "x").is_err());
        let mut h = new_hist();
        h.record(1234).unwrap_or_else(|e| panic!("{e:?}"));
        let n =
            write_cdf(&dir, &crate::stats::hist_to_hex(&h), "x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 1);
        let text = std::fs::read_to_string(&dir).unwrap_or_default();
        let _ = std::fs::remove_file(&dir);
        assert!(text.contains("<svg") && text.contains("</svg>"));
    }
}

//! The kernels against their host twins, on random shapes with ragged tails.

use gptoss_engine::rng::Rng;
use gptoss_kernels::bf16::{bf16_to_f32, f32_to_bf16};
use gptoss_kernels::mxfp4;

use super::{e2s, Report, Target};
use crate::args;
use crate::driver::{DevBuf, Gpu};
use crate::layout::{pack_frag16, pack_frag4, TileShape};
use crate::model::{KernelSet, LinearArgs};
use crate::routing::{max_items, max_rows, route};

fn upload<T: Copy>(gpu: &Gpu, v: &[T]) -> Result<DevBuf, String> {
    let b = gpu.alloc(std::mem::size_of_val(v)).map_err(e2s)?;
    gpu.upload(b.ptr, v).map_err(e2s)?;
    Ok(b)
}

fn download<T: Copy + Default>(gpu: &Gpu, b: &DevBuf, n: usize) -> Result<Vec<T>, String> {
    let mut v = vec![T::default(); n];
    gpu.download(&mut v, b.ptr).map_err(e2s)?;
    Ok(v)
}

pub(super) fn run(rep: &mut Report, target: Target) {
    let mut gpu = match target.gpu() {
        Ok(g) => g,
        Err(e) => return rep.record("open cuda:0", Err(e.to_string())),
    };
    let emu = target.emulated();
    rep.record("open cuda:0, load the kernel image", Ok(format!("{} kernels found", crate::model::KERNELS.len())));
    for name in crate::model::KERNELS {
        if let Err(e) = gpu.func(name, crate::model::smem_of(name)) {
            rep.record(&format!("kernel {name}"), Err(e.to_string()));
        }
    }
    let mut rng = Rng::new(11);
    rep.check("relayout frag16 = host twin (bitwise)", || {
        let mut n = 0;
        let shapes: &[(usize, usize)] = if emu {
            &[(16, 64), (40, 96), (5, 32), (33, 320)]
        } else {
            &[(16, 64), (40, 96), (5, 32), (515, 2880), (72, 4096)]
        };
        for &(r, c) in shapes {
            let src: Vec<u16> = (0..r * c).map(|_| rng.next_u64() as u16).collect();
            let s = TileShape::new(r, c);
            let want = pack_frag16(&src, &s);
            let sb = upload(&gpu, &src)?;
            let db = gpu.alloc(want.len() * 4).map_err(e2s)?;
            gpu.memset(db.ptr, 0xAB, want.len() * 4).map_err(e2s)?;
            let f = gpu.func("relayout_frag16", 0).map_err(e2s)?;
            let (sp, dp, rr, cc, mt, ks, z) =
                (sb.ptr, db.ptr, r as i32, c as i32, s.mt as i32, (s.kb * 4) as i32, 0i64);
            gpu.launch(f, (want.len().div_ceil(256) as u32, 1, 1), 256, 0, &mut args![sp, z, rr, cc, dp, z, mt, ks])
                .map_err(e2s)?;
            let got: Vec<u32> = download(&gpu, &db, want.len())?;
            if got != want {
                return Err(format!("{r}x{c}: differs"));
            }
            n += 1;
        }
        Ok(format!("{n} shapes"))
    });
    rep.check("relayout frag4 = host twin (bitwise)", || {
        let mut n = 0;
        let shapes: &[(usize, usize, usize)] = if emu {
            &[(1, 16, 64), (3, 40, 96), (2, 5, 32)]
        } else {
            &[(1, 16, 64), (3, 40, 96), (2, 5, 32), (2, 520, 2880)]
        };
        for &(e, r, c) in shapes {
            let codes: Vec<u8> = (0..e * r * c / 2).map(|_| rng.next_u64() as u8).collect();
            let scales: Vec<u8> = (0..e * r * c / 32).map(|_| 100 + (rng.next_u64() % 40) as u8).collect();
            let s = TileShape::new(r, c);
            let (cb, sb) = (upload(&gpu, &codes)?, upload(&gpu, &scales)?);
            let (cw, sw) = (s.frag4_code_words(), s.frag4_scale_words());
            let (dc, ds) = (gpu.alloc(e * cw * 4).map_err(e2s)?, gpu.alloc(e * sw * 4).map_err(e2s)?);
            let (rr, cc, mt, kb) = (r as i32, c as i32, s.mt as i32, s.kb as i32);
            let (csr, ssr, dcw, dsw) = ((r * c / 2) as i64, (r * c / 32) as i64, cw as i64, sw as i64);
            let (cp, spp, dcp, dsp) = (cb.ptr, sb.ptr, dc.ptr, ds.ptr);
            let f = gpu.func("relayout_frag4_codes", 0).map_err(e2s)?;
            gpu.launch(
                f,
                (cw.div_ceil(256) as u32, e as u32, 1),
                256,
                0,
                &mut args![cp, csr, rr, cc, dcp, dcw, mt, kb],
            )
            .map_err(e2s)?;
            let f = gpu.func("relayout_frag4_scales", 0).map_err(e2s)?;
            gpu.launch(
                f,
                (sw.div_ceil(256) as u32, e as u32, 1),
                256,
                0,
                &mut args![spp, ssr, rr, cc, dsp, dsw, mt, kb],
            )
            .map_err(e2s)?;
            let (gc, gs): (Vec<u32>, Vec<u32>) = (download(&gpu, &dc, e * cw)?, download(&gpu, &ds, e * sw)?);
            for x in 0..e {
                let (wc, ws) = pack_frag4(
                    &codes[x * r * c / 2..(x + 1) * r * c / 2],
                    &scales[x * r * c / 32..(x + 1) * r * c / 32],
                    &s,
                );
                if gc[x * cw..(x + 1) * cw] != wc[..] || gs[x * sw..(x + 1) * sw] != ws[..] {
                    return Err(format!("{e}x{r}x{c}: expert {x} differs"));
                }
            }
            n += 1;
        }
        Ok(format!("{n} shapes"))
    });
    for mx in [false, true] {
        let w = if mx { "mxfp4" } else { "bf16" };
        rep.check(&format!("linear {w}: fast and simple kernels vs f64 host, all batch sizes"), || {
            linear_check(&mut gpu, mx, &mut rng, emu)
        });
    }
    rep.check("linear mxfp4 experts: grouped items + swiglu vs host", || experts_check(&mut gpu, &mut rng, emu));
    rep.check("route_tokens = host twin", || route_check(&mut gpu, &mut rng, emu));
    rep.check("pick_tokens = host twin (sampling on the device)", || pick_check(&mut gpu, &mut rng, emu));
}

fn pick_check(gpu: &mut Gpu, rng: &mut Rng, emu: bool) -> Result<String, String> {
    use gptoss_engine::sampler::{pick_on_host, PickSpec};
    let v = if emu { 3000 } else { 201_088 };
    let specs = [
        (0.0, 0, 1.0, 0.0),
        (1.0, 0, 1.0, 0.0),
        (1.0, 1, 1.0, 0.0),
        (0.7, 40, 1.0, 0.0),
        (1.0, 0, 0.5, 0.0),
        (1.2, 100, 0.9, 0.0),
        (1.0, 0, 1.0, 0.1),
        (0.8, 10, 0.95, 0.02),
    ];
    let rows = 2 * specs.len();
    let mut logits = randn(rng, rows * v, 4.0);
    // Ties, a NaN and -inf in some rows.
    logits[5] = logits[7];
    logits[v + 3] = f32::NAN;
    logits[2 * v + 9] = f32::NEG_INFINITY;
    let mut picks = Vec::new();
    for r in 0..rows {
        let (t, k, p, m) = specs[r % specs.len()];
        picks.push(PickSpec {
            temperature: t,
            top_k: k,
            top_p: p,
            min_p: m,
            u: (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64,
            top_n: r % 4 * 3,
        });
    }
    let dev: Vec<crate::model::DevPick> = picks.iter().map(crate::model::DevPick::from).collect();
    let lb = upload(gpu, &logits)?;
    let sb = upload(gpu, &dev)?;
    let mt = crate::model::MAX_TOP;
    let (tok, lp, tid, tlp) = (
        gpu.alloc(4 * rows).map_err(e2s)?,
        gpu.alloc(4 * rows).map_err(e2s)?,
        gpu.alloc(4 * rows * mt).map_err(e2s)?,
        gpu.alloc(4 * rows * mt).map_err(e2s)?,
    );
    let f = gpu.func("pick_tokens", 0).map_err(e2s)?;
    let (lp_, vi, sp, tp, lpp, tip, tlpp, mti) =
        (lb.ptr, v as i32, sb.ptr, tok.ptr, lp.ptr, tid.ptr, tlp.ptr, mt as i32);
    gpu.launch(f, (rows as u32, 1, 1), 1024, 0, &mut args![lp_, vi, sp, tp, lpp, tip, tlpp, mti]).map_err(e2s)?;
    let got_tok: Vec<i32> = download(gpu, &tok, rows)?;
    let got_lp: Vec<f32> = download(gpu, &lp, rows)?;
    let got_tid: Vec<i32> = download(gpu, &tid, rows * mt)?;
    let mut same = 0;
    for r in 0..rows {
        let want = pick_on_host(&logits[r * v..(r + 1) * v], &picks[r]);
        if want.token == got_tok[r] as u32 {
            same += 1;
            if (want.logprob - got_lp[r]).abs() > 1e-4 && want.logprob.is_finite() {
                return Err(format!("row {r}: logprob {} vs {}", got_lp[r], want.logprob));
            }
        } else if emu {
            return Err(format!("row {r} ({:?}): token {} vs {}", picks[r], got_tok[r], want.token));
        }
        for (j, &(id, _)) in want.top_logprobs.iter().enumerate() {
            if got_tid[r * mt + j] as u32 != id {
                return Err(format!("row {r}: alternative {j} is {} vs {id}", got_tid[r * mt + j]));
            }
        }
    }
    // On a GPU, expf may round a weight differently from the host's by an ulp, which can move
    // a boundary; nearly every row must still agree.
    if same < rows - rows / 8 {
        return Err(format!("only {same}/{rows} tokens agree"));
    }
    Ok(format!("{same}/{rows} rows pick the host's token over {v} logits (greedy, temperature, top-k, top-p, min-p, ties, NaN, -inf)"))
}

/// Host reference of one product row: Σ x·w in f64, and Σ |x·w| (the scale of rounding).
fn host_dot(x: &[f32], w: &[f32]) -> (f64, f64) {
    x.iter().zip(w).fold((0.0, 0.0), |(s, a), (&p, &q)| (s + p as f64 * q as f64, a + (p as f64 * q as f64).abs()))
}

struct Mat {
    /// Decoded f32 rows `[rows, cols]`.
    dense: Vec<f32>,
    buf: DevBuf,
    scales: Option<DevBuf>,
    shape: TileShape,
}

fn random_mat(gpu: &Gpu, rng: &mut Rng, mx: bool, rows: usize, cols: usize) -> Result<Mat, String> {
    let s = TileShape::new(rows, cols);
    if mx {
        let codes: Vec<u8> = (0..rows * cols / 2).map(|_| rng.next_u64() as u8).collect();
        let scales: Vec<u8> = (0..rows * cols / 32).map(|_| 118 + (rng.next_u64() % 6) as u8).collect();
        let mut dense = vec![0f32; rows * cols];
        for r in 0..rows {
            mxfp4::decode_row(
                &codes[r * cols / 2..(r + 1) * cols / 2],
                &scales[r * cols / 32..(r + 1) * cols / 32],
                &mut dense[r * cols..(r + 1) * cols],
            );
        }
        let (c, sc) = pack_frag4(&codes, &scales, &s);
        Ok(Mat { dense, buf: upload(gpu, &c)?, scales: Some(upload(gpu, &sc)?), shape: s })
    } else {
        let half = (3.0 / cols as f32).sqrt();
        let bits: Vec<u16> = (0..rows * cols)
            .map(|_| f32_to_bf16(half * (2.0 * (rng.next_u64() >> 40) as f32 / 16777216.0 - 1.0)))
            .collect();
        let dense = bits.iter().map(|&b| bf16_to_f32(b)).collect();
        Ok(Mat { dense, buf: upload(gpu, &pack_frag16(&bits, &s))?, scales: None, shape: s })
    }
}

fn randn(rng: &mut Rng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| amp * (2.0 * (rng.next_u64() >> 40) as f32 / 16777216.0 - 1.0)).collect()
}

fn lin_args(m: &Mat, bias: u64, x: u64, y: u64, t: usize, mode: i32, slices: usize) -> LinearArgs {
    LinearArgs {
        w: m.buf.ptr,
        scales: m.scales.as_ref().map_or(0, |s| s.ptr),
        bias,
        x,
        y,
        ntiles: t.div_ceil(8) as i32,
        rows: t as i32,
        r: m.shape.rows as i32,
        mt: m.shape.mt as i32,
        k: m.shape.cols as i32,
        kb: m.shape.kb as i32,
        s: slices as i32,
        x_stride: m.shape.cols as i32,
        y_stride: m.shape.rows as i32,
        mode,
        swiglu_limit: 7.0,
        ..Default::default()
    }
}

/// Runs the linear kernel the runner would pick for `t` tokens (or the simple twin).
fn launch_linear(
    gpu: &mut Gpu,
    a: &LinearArgs,
    mx: bool,
    t: usize,
    kernels: KernelSet,
    items: usize,
) -> Result<(), String> {
    crate::model::launch_linear(gpu, a, mx, t, kernels, items).map_err(e2s)
}

fn linear_check(gpu: &mut Gpu, mx: bool, rng: &mut Rng, emu: bool) -> Result<String, String> {
    let mut worst = 0f64;
    let mut cases = 0;
    let shapes: &[(usize, usize)] = if emu {
        &[(48, 64), (40, 96), (24, 320)]
    } else {
        &[(48, 64), (40, 96), (72, 2880), (2880, 2880), (200, 4096)]
    };
    for &(rows, cols) in shapes {
        if mx && cols % 32 != 0 {
            continue;
        }
        let m = random_mat(gpu, rng, mx, rows, cols)?;
        let bias_h = randn(rng, rows, 0.1);
        let bias = upload(gpu, &bias_h)?;
        let tmax = 130;
        let x_h = randn(rng, tmax * cols, 2.0);
        let x = upload(gpu, &x_h)?;
        let y = gpu.alloc(tmax * rows * 4).map_err(e2s)?;
        let slices = crate::plan::k_slices(m.shape.mt, m.shape.kb, 1);
        let mut by_t: Vec<Vec<f32>> = Vec::new();
        let ts: &[usize] = if emu { &[1, 2, 9, 33, 65, 130] } else { &[1, 2, 5, 8, 9, 16, 33, 64, 65, 130] };
        for &t in ts {
            for kernels in [KernelSet::Fast, KernelSet::Simple] {
                if kernels == KernelSet::Simple && rows * cols > 1 << 20 && t > 9 {
                    continue; // the twin is slow; a few sizes are enough
                }
                gpu.memset(y.ptr, 0xff, tmax * rows * 4).map_err(e2s)?; // NaN poison
                let a = lin_args(&m, bias.ptr, x.ptr, y.ptr, t, 0, slices);
                launch_linear(gpu, &a, mx, t, kernels, t.div_ceil(8).div_ceil(8))?;
                let got: Vec<f32> = download(gpu, &y, t * rows)?;
                // Big shapes: every 7th row and token on the host (the f64 sums are slow).
                let step = if rows * cols > 1 << 20 { 7 } else { 1 };
                for tok in (0..t).step_by(step.min(t.max(1))) {
                    for r in (0..rows).step_by(step) {
                        let (want, mag) =
                            host_dot(&x_h[tok * cols..(tok + 1) * cols], &m.dense[r * cols..(r + 1) * cols]);
                        let want = want + bias_h[r] as f64;
                        let g = got[tok * rows + r] as f64;
                        let err = (g - want).abs() / (mag + 1e-30);
                        if err.is_nan() || err > 2e-5 {
                            return Err(format!(
                                "{rows}x{cols} T={t} {kernels:?}: token {tok} row {r}: {g} vs {want} (rel {err:.2e})"
                            ));
                        }
                        worst = worst.max(err);
                    }
                }
                if kernels == KernelSet::Fast {
                    by_t.push(got[..rows].to_vec());
                }
                cases += 1;
            }
        }
        // Token 0's row has the same x at every T: the same bits from every kernel shape.
        if let Some(first) = by_t.first() {
            for (i, other) in by_t.iter().enumerate() {
                if other.iter().zip(first).any(|(a, b)| a.to_bits() != b.to_bits()) {
                    return Err(format!("{rows}x{cols}: token 0 differs between batch sizes (case {i})"));
                }
            }
        }
    }
    Ok(format!("{cases} cases, worst error {worst:.2e} of Σ|x·w|; token 0 bitwise equal over T = 1..130"))
}

fn experts_check(gpu: &mut Gpu, rng: &mut Rng, emu: bool) -> Result<String, String> {
    let (e, k, h, i) = if emu { (8usize, 4usize, 128usize, 48usize) } else { (8, 4, 2880, 512) };
    let mut mats = Vec::new();
    for _ in 0..e {
        mats.push(random_mat(gpu, rng, true, 2 * i, h)?);
    }
    // One buffer for all experts, as the model holds them.
    let s = mats[0].shape;
    let (cw, sw) = (s.frag4_code_words(), s.frag4_scale_words());
    let all_c = gpu.alloc(e * cw * 4).map_err(e2s)?;
    let all_s = gpu.alloc(e * sw * 4).map_err(e2s)?;
    for (x, m) in mats.iter().enumerate() {
        gpu.copy_d2d(all_c.ptr + (x * cw * 4) as u64, m.buf.ptr, cw * 4).map_err(e2s)?;
        gpu.copy_d2d(all_s.ptr + (x * sw * 4) as u64, m.scales.as_ref().map_or(0, |b| b.ptr), sw * 4).map_err(e2s)?;
    }
    let bias_h = randn(rng, e * 2 * i, 0.1);
    let bias = upload(gpu, &bias_h)?;
    let mut worst = 0f64;
    let mut bitwise: Option<Vec<f32>> = None;
    let ts: &[usize] = if emu { &[1, 3, 20, 70] } else { &[1, 3, 20, 64, 100] };
    for &t in ts {
        // (64 takes the decode kernel with 8 n-tiles, 70 and 100 the GEMM.)
        let logits = randn(rng, t * e, 3.0);
        for kernels in [KernelSet::Fast, KernelSet::Simple] {
            let fast_t = if kernels == KernelSet::Fast && t <= 64 { t.div_ceil(8).next_power_of_two() } else { 8 };
            let r = route(&logits, e, k, fast_t);
            let x_h = randn(rng, t * h, 2.0);
            let x = upload(gpu, &x_h)?;
            let rows = max_rows(t * k, e);
            let items_flat: Vec<i32> = r.items.iter().flatten().copied().collect();
            let items = upload(gpu, &items_flat)?;
            let n_items = upload(gpu, &[r.items.len() as i32])?;
            let mut row_src = r.row_src.clone();
            row_src.resize(rows, -1);
            let rs = upload(gpu, &row_src)?;
            let y = gpu.alloc(rows * i * 4).map_err(e2s)?;
            gpu.memset(y.ptr, 0xff, rows * i * 4).map_err(e2s)?;
            let a = LinearArgs {
                w: all_c.ptr,
                scales: all_s.ptr,
                w_stride: (cw * 4) as i64,
                s_stride: sw as i64,
                bias: bias.ptr,
                x: x.ptr,
                x_rows: rs.ptr,
                y: y.ptr,
                items: items.ptr,
                n_items: n_items.ptr,
                ntiles: 0,
                rows: rows as i32,
                r: (2 * i) as i32,
                mt: s.mt as i32,
                k: h as i32,
                kb: s.kb as i32,
                s: crate::plan::k_slices(s.mt, s.kb, k) as i32,
                x_stride: h as i32,
                y_stride: i as i32,
                mode: 2,
                swiglu_limit: 7.0,
                ..Default::default()
            };
            launch_linear(gpu, &a, true, t, kernels, max_items(t * k, e))?;
            let got: Vec<f32> = download(gpu, &y, rows * i)?;
            for (slot, &row) in r.prow.iter().enumerate() {
                let (tok, ex) = (slot / k, r.experts[slot] as usize);
                for n in (slot % 5..i).step_by(5) {
                    let xr = &x_h[tok * h..(tok + 1) * h];
                    let (g, gm) = host_dot(xr, &mats[ex].dense[(2 * n) * h..(2 * n + 1) * h]);
                    let (u, um) = host_dot(xr, &mats[ex].dense[(2 * n + 1) * h..(2 * n + 2) * h]);
                    let (g, u) = (
                        (g + bias_h[ex * 2 * i + 2 * n] as f64) as f32,
                        (u + bias_h[ex * 2 * i + 2 * n + 1] as f64) as f32,
                    );
                    let mut want = [0f32];
                    gptoss_kernels::scalar::swiglu_interleaved_f32(&[g, u], 1.702, 7.0, &mut want);
                    let got_v = got[row as usize * i + n];
                    // Through swiglu the error grows by at most its slope (< 9 here).
                    let err = (got_v - want[0]).abs() as f64 / (10.0 * (gm + um) + 1e-30);
                    if err.is_nan() || err > 2e-5 {
                        return Err(format!("T={t} {kernels:?} slot {slot} unit {n}: {got_v} vs {}", want[0]));
                    }
                    worst = worst.max(err);
                }
            }
            if t == 1 && kernels == KernelSet::Fast {
                bitwise = Some(got[r.prow[0] as usize * i..r.prow[0] as usize * i + i].to_vec());
            }
        }
    }
    let _ = bitwise;
    Ok(format!("T = 1..100, worst error {worst:.2e}"))
}

fn route_check(gpu: &mut Gpu, rng: &mut Rng, emu: bool) -> Result<String, String> {
    let mut n = 0;
    let cases: &[(usize, usize, usize)] = if emu {
        &[(1, 32, 4), (7, 8, 4), (64, 128, 4), (300, 32, 4)]
    } else {
        &[(1, 32, 4), (7, 8, 4), (64, 128, 4), (300, 32, 4), (2048, 128, 4)]
    };
    for &(t, e, k) in cases {
        let mut logits = randn(rng, t * e, 2.0);
        // Ties and a NaN: the lower index wins, NaN never does.
        if t > 1 {
            logits[e + 3] = logits[e + 5];
            logits[2 * e] = f32::NAN;
        }
        for ntiles in [1usize, 8] {
            let want = route(&logits, e, k, ntiles);
            let lb = upload(gpu, &logits)?;
            let (rows, items) = (max_rows(t * k, e), max_items(t * k, e));
            let bufs: Vec<DevBuf> = [t * k, t * k, t * k, rows, 3 * items, 2]
                .iter()
                .map(|&n| gpu.alloc(4 * n).map_err(e2s))
                .collect::<Result<_, _>>()?;
            let ra = crate::model::RouteArgs {
                logits: lb.ptr,
                t: t as i32,
                e: e as i32,
                k: k as i32,
                experts: bufs[0].ptr,
                gates: bufs[1].ptr,
                prow: bufs[2].ptr,
                row_src: bufs[3].ptr,
                items: bufs[4].ptr,
                counts: bufs[5].ptr,
                max_rows: rows as i32,
                max_items: items as i32,
                item_ntiles: ntiles as i32,
            };
            let f = gpu.func("route_tokens", 0).map_err(e2s)?;
            gpu.launch(f, (1, 1, 1), 1024, 0, &mut args![ra]).map_err(e2s)?;
            let experts: Vec<i32> = download(gpu, &bufs[0], t * k)?;
            let gates: Vec<f32> = download(gpu, &bufs[1], t * k)?;
            let prow: Vec<i32> = download(gpu, &bufs[2], t * k)?;
            let counts: Vec<i32> = download(gpu, &bufs[5], 2)?;
            let row_src: Vec<i32> = download(gpu, &bufs[3], counts[1].max(0) as usize)?;
            let items_got: Vec<i32> = download(gpu, &bufs[4], 3 * counts[0].max(0) as usize)?;
            if experts != want.experts {
                return Err(format!("T={t} E={e}: experts differ"));
            }
            if let Some((j, (a, b))) =
                gates.iter().zip(&want.gates).enumerate().find(|(_, (a, b))| (*a - *b).abs() > 1e-6)
            {
                return Err(format!("T={t}: gate {j} {a} vs {b}"));
            }
            if prow != want.prow || row_src != want.row_src {
                return Err(format!("T={t} E={e}: grouped rows differ"));
            }
            let want_items: Vec<i32> = want.items.iter().flatten().copied().collect();
            if items_got != want_items {
                return Err(format!("T={t} E={e} ntiles={ntiles}: items differ"));
            }
            n += 1;
        }
    }
    Ok(format!("{n} cases (ties, NaN)"))
}

//! `gptoss synth`: random-weight checkpoints of the real shapes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use gptoss_engine::{synth, Layout, ModelConfig};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Shape {
    /// The test fixture's shape (4 layers, hidden 64) with the full 201,088-token vocabulary.
    Tiny,
    /// gpt-oss-20b's shape: about 13 GB on disk, written in a minute or so.
    #[value(name = "20b")]
    Gpt20b,
    /// gpt-oss-120b's shape: about 65 GB on disk.
    #[value(name = "120b")]
    Gpt120b,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LayoutArg {
    Hf,
    Original,
    /// mlx-community's MXFP4-Q4: experts MXFP4, attention/embedding/unembedding affine
    /// 4-bit (group 64), routers 8-bit.
    #[value(name = "mlx-mxfp4-q4")]
    MlxMxfp4Q4,
    /// MXFP4-Q8: the same with 8-bit attention, embedding and unembedding.
    #[value(name = "mlx-mxfp4-q8")]
    MlxMxfp4Q8,
    /// llm-compressor's W4A16 (compressed-tensors int4, symmetric, group 32): attention and
    /// every expert int4, embedding, routers and lm_head bf16.
    #[value(name = "w4a16-g32")]
    W4a16G32,
}

#[derive(clap::Args)]
#[command(after_help = "The tiny shape (about 50 MB) answers in gibberish but runs every command in seconds: \
    gptoss synth --shape tiny --out gpt-oss-tiny && gptoss chat gpt-oss-tiny")]
pub struct Args {
    /// tiny (about 50 MB), 20b (about 13 GB on disk) or 120b (about 65 GB).
    #[arg(long, value_enum)]
    shape: Shape,
    #[arg(long, value_enum, default_value = "hf")]
    layout: LayoutArg,
    /// Output folder (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// Overwrite a checkpoint already in DIR.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<()> {
    let config = match args.shape {
        Shape::Tiny => ModelConfig::tiny(),
        Shape::Gpt20b => ModelConfig::gpt_oss_20b(),
        Shape::Gpt120b => ModelConfig::gpt_oss_120b(),
    };
    let (layout, mlx_bits) = match args.layout {
        LayoutArg::Hf => (Layout::HuggingFace, None),
        LayoutArg::Original => (Layout::Original, None),
        LayoutArg::MlxMxfp4Q4 => (Layout::Mlx, Some(4)),
        LayoutArg::MlxMxfp4Q8 => (Layout::Mlx, Some(8)),
        LayoutArg::W4a16G32 => (Layout::CompressedTensors, None),
    };
    if args.out.join("config.json").exists() && !args.force {
        bail!("{} already holds a checkpoint (config.json); pass --force to overwrite it", args.out.display());
    }
    let t0 = Instant::now();
    // A bar on a terminal (indicatif hides it elsewhere, and -q hides it).
    let bar = if super::ui::quiet() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("writing {bar:30} {percent:>3}% ({bytes} / {total_bytes})")
    {
        bar.set_style(style);
    }
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let summary = match (mlx_bits, layout) {
        (Some(bits), _) => synth::write_mlx_checkpoint(&config, bits, &args.out, args.seed, progress),
        (None, Layout::CompressedTensors) => synth::write_w4a16_checkpoint(&config, 32, &args.out, args.seed, progress),
        (None, _) => synth::write_checkpoint(&config, layout, &args.out, args.seed, progress),
    };
    bar.finish_and_clear();
    let summary = summary?;
    eprintln!(
        "wrote {} tensors, {} in {} file(s) to {} in {:.1} s",
        summary.tensors,
        super::human_bytes(summary.bytes),
        summary.files.len(),
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

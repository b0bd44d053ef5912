//! The OpenAI API suite (tests/api, Python): the official `openai` client drives real
//! `gptoss serve` processes on a synth checkpoint and on scripted completions. Needs
//! `pip install -r tests/api/requirements.txt`; `.ci/run` installs it.

use std::path::Path;
use std::process::Command;

#[test]
fn openai_client_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let has_client = Command::new("python3").args(["-c", "import openai, pytest"]).status().is_ok_and(|s| s.success());
    assert!(
        has_client,
        "the API tests need Python 3 with the openai and pytest packages: \
         pip install -r tests/api/requirements.txt"
    );
    let status = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/api"])
        .current_dir(&root)
        .env("GPTOSS_BIN", env!("CARGO_BIN_EXE_gptoss"))
        // The servers inherit it: the suite checks the CPU path's behaviour.
        .env("GPTOSS_DEVICE", "cpu")
        .status()
        .expect("running pytest");
    assert!(status.success(), "the API suite failed (output above)");
}

//! Facts about the test apps in tests/apps that tests check against.
use std::{collections::HashMap, fs};

use crate::repo_root;

/// `# LINE:name` markers of the test apps: the line numbers their code runs through.
pub fn markers() -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for file in ["chains.py", "flaskapp.py"] {
        let text = fs::read_to_string(repo_root().join("tests/apps").join(file)).expect("read app");
        for (i, line) in text.lines().enumerate() {
            if let Some(name) = line.split("# LINE:").nth(1) {
                out.insert(name.trim().to_string(), i as u64 + 1);
            }
        }
    }
    out
}

/// The line of one marker.
pub fn line(marker: &str) -> u64 {
    *markers().get(marker).unwrap_or_else(|| panic!("no # LINE:{marker} in the test apps"))
}

//! Frames of a stack, whatever produced them: the Python reader, native or kernel symbolization.
use serde::{Deserialize, Serialize};

/// One frame of a stack, innermost first in a stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
    /// "python", "native" or "kernel".
    pub kind: FrameKind,
    /// Python: the line its function is defined on (`co_firstlineno`), which names the function
    /// where `line` names the place in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub def_line: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    Python,
    Native,
    Kernel,
}

/// A frame as read from the frame chain: the code object and the raw position field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawFrame {
    pub code: u64,
    pub lasti: u64,
}

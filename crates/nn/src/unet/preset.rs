use std::fmt;
use std::str::FromStr;

/// The reference's model sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// CPU-friendly: 280,177 parameters (280,881 with 10 classes).
    Tiny,
    /// DDPM's layout scaled to 28x28: 3,939,393 parameters (3,940,801 with 10 classes).
    Small,
}

/// The numbers behind a preset (`PRESETS` in ddpm_ref.py).
#[derive(Debug, Clone, Copy)]
pub struct PresetConfig {
    pub base: usize,
    pub mults: &'static [usize],
    pub res_blocks: usize,
    /// Resolutions (28, 14, 7) at which attention follows each ResBlock.
    pub attn_res: &'static [usize],
    pub groups: usize,
    pub dropout: f32,
}

impl Preset {
    pub fn config(self) -> PresetConfig {
        match self {
            Preset::Tiny => {
                PresetConfig { base: 16, mults: &[1, 2, 2], res_blocks: 1, attn_res: &[7], groups: 8, dropout: 0.0 }
            }
            Preset::Small => {
                PresetConfig { base: 32, mults: &[1, 2, 4], res_blocks: 2, attn_res: &[7], groups: 8, dropout: 0.1 }
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Preset, String> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "small" => Ok(Preset::Small),
            other => Err(format!("unknown preset {other:?}: expected \"tiny\" or \"small\"")),
        }
    }
}

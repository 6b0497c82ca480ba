//! The console escape: with stdin a terminal, Ctrl-A starts a command to Canto instead of a byte
//! for the guest, as in QEMU and screen. The keys are in [`ESCAPE_HELP`].

/// The escape byte, Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// What the keys do; `--help` and Ctrl-A h print it.
pub const ESCAPE_HELP: &str = "\
Console keys (when stdin is a terminal):
  Ctrl-A x       end the VM (its devices flushed, the terminal restored; exit status 0)
  Ctrl-A Ctrl-A  send one Ctrl-A to the guest
  Ctrl-A h       print these keys
  Ctrl-A, then any other key: both go to the guest";

/// What the host's input asks for, besides bytes for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapeCommand {
    /// Ctrl-A x: end the VM.
    Exit,
    /// Ctrl-A h: print [`ESCAPE_HELP`].
    Help,
}

/// Splits host input into bytes for the guest and escape commands. A Ctrl-A at the end of one
/// read waits for the next byte, whichever read brings it.
#[derive(Debug, Default)]
pub struct EscapeDecoder {
    after_escape: bool,
}

impl EscapeDecoder {
    /// Decodes `input`: the guest's bytes are appended to `to_guest` (never more than
    /// `input.len()` + 1 of them), the commands returned in order.
    pub fn feed(&mut self, input: &[u8], to_guest: &mut Vec<u8>) -> Vec<EscapeCommand> {
        let mut commands = Vec::new();
        for &byte in input {
            if !self.after_escape {
                if byte == ESCAPE {
                    self.after_escape = true;
                } else {
                    to_guest.push(byte);
                }
                continue;
            }
            self.after_escape = false;
            match byte {
                b'x' | b'X' => commands.push(EscapeCommand::Exit),
                b'h' | b'H' | b'?' => commands.push(EscapeCommand::Help),
                ESCAPE => to_guest.push(ESCAPE),
                other => to_guest.extend_from_slice(&[ESCAPE, other]),
            }
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> (Vec<u8>, Vec<EscapeCommand>) {
        let mut decoder = EscapeDecoder::default();
        let mut guest = Vec::new();
        let mut commands = Vec::new();
        for chunk in chunks {
            commands.extend(decoder.feed(chunk, &mut guest));
        }
        (guest, commands)
    }

    #[test]
    fn plain_input_passes_through() {
        assert_eq!(decode(&[b"ls -l\r"]), (b"ls -l\r".to_vec(), vec![]));
    }

    #[test]
    fn escape_keys() {
        assert_eq!(
            decode(&[b"a\x01xb"]),
            (b"ab".to_vec(), vec![EscapeCommand::Exit])
        );
        assert_eq!(decode(&[b"\x01h"]), (vec![], vec![EscapeCommand::Help]));
        assert_eq!(decode(&[b"\x01\x01"]), (vec![ESCAPE], vec![]));
        assert_eq!(
            decode(&[b"\x01\x01\x01\x01"]),
            (vec![ESCAPE, ESCAPE], vec![])
        );
        assert_eq!(decode(&[b"\x01q"]), (b"\x01q".to_vec(), vec![]));
        // Ctrl-A Ctrl-A then x: the second Ctrl-A was sent, so x is a plain x.
        assert_eq!(decode(&[b"\x01\x01x"]), (b"\x01x".to_vec(), vec![]));
    }

    #[test]
    fn an_escape_split_across_reads() {
        assert_eq!(
            decode(&[b"abc\x01", b"x"]),
            (b"abc".to_vec(), vec![EscapeCommand::Exit])
        );
        assert_eq!(
            decode(&[b"\x01", b"\x01", b"z"]),
            (b"\x01z".to_vec(), vec![])
        );
        // A lone Ctrl-A at the end stays pending: nothing reaches the guest yet.
        assert_eq!(decode(&[b"\x01"]), (vec![], vec![]));
    }

    #[test]
    fn the_help_names_every_key() {
        for key in ["Ctrl-A x", "Ctrl-A Ctrl-A", "Ctrl-A h"] {
            assert!(ESCAPE_HELP.contains(key), "{key}");
        }
    }
}

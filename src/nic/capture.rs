//! Capture of the frames a NIC delivers to its guest, to a pcapng file that tcpdump and
//! Wireshark read. Each RX queue is its own interface in the file (named `PORT:rx-N`), and
//! every packet carries a comment with its queue and class, so a capture shows what the
//! classifier decided.

use std::borrow::Cow;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};

use crate::classify::Class;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot write capture file {path}: {source}")]
    Write {
        path: PathBuf,
        source: pcap_file::PcapError,
    },
}

pub struct Capture {
    path: PathBuf,
    /// Only this queue, or all.
    queue: Option<usize>,
    writer: Mutex<PcapNgWriter<BufWriter<File>>>,
}

impl Capture {
    /// Starts a capture in `file`, newly created at `path` by the caller (who decides where
    /// captures may go), and describes one interface per queue.
    pub fn new(
        file: File,
        path: &Path,
        port: &str,
        queues: usize,
        queue: Option<usize>,
    ) -> Result<Self, CaptureError> {
        let write_error = |source| CaptureError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut writer = PcapNgWriter::new(BufWriter::new(file)).map_err(write_error)?;
        for index in 0..queues {
            let mut interface = InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0);
            interface
                .options
                .push(InterfaceDescriptionOption::IfName(Cow::Owned(format!(
                    "{port}:rx-{index}"
                ))));
            interface
                .options
                .push(InterfaceDescriptionOption::IfTsResol(9));
            writer.write_pcapng_block(interface).map_err(write_error)?;
        }
        Ok(Capture {
            path: path.to_path_buf(),
            queue,
            writer: Mutex::new(writer),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a delivered frame (if it is on the captured queue).
    pub fn record(&self, queue: usize, class: Class, frame: &[u8]) {
        if self.queue.is_some_and(|only| only != queue) {
            return;
        }
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let block = EnhancedPacketBlock {
            interface_id: queue as u32,
            timestamp,
            original_len: frame.len() as u32,
            data: Cow::Borrowed(frame),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(format!(
                "queue={queue} class={class}"
            )))],
        };
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // A full disk stops the capture, not the data path.
        let _ = writer.write_pcapng_block(block);
    }

    /// Flushes buffered packets to the file.
    pub fn flush(&self) {
        use std::io::Write;
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writer.get_mut().flush();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.flush();
    }
}

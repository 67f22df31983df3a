//! Spans of device time. On the CPU a span is wall time. On a GPU the host only
//! queues work, so its own clock would measure the launches: there a span is a
//! pair of CUDA events on the device's stream, read once the step has been
//! synchronised (reading one waits for its end event).

use candle_core::Device;
use std::time::Instant;

pub struct Span(Inner);

enum Inner {
    Wall(Instant, Option<Instant>),
    #[cfg(feature = "cuda")]
    Events(
        candle_core::cuda_backend::cudarc::driver::CudaEvent,
        Option<candle_core::cuda_backend::cudarc::driver::CudaEvent>,
        std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
    ),
}

impl Span {
    /// Starts a span at the device's current point of work.
    pub fn start(device: &Device) -> Span {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = device {
            let stream = d.cuda_stream();
            if let Ok(e) = stream.record_event(Some(timing_flags())) {
                return Span(Inner::Events(e, None, stream));
            }
        }
        let _ = device;
        Span(Inner::Wall(Instant::now(), None))
    }

    /// Ends the span (queued on a GPU: nothing waits here).
    pub fn stop(&mut self) {
        match &mut self.0 {
            Inner::Wall(_, end) => *end = Some(Instant::now()),
            #[cfg(feature = "cuda")]
            Inner::Events(_, end, stream) => *end = stream.record_event(Some(timing_flags())).ok(),
        }
    }

    /// The span's length in milliseconds (to now if not stopped; 0 if a GPU event failed).
    pub fn ms(&self) -> f64 {
        match &self.0 {
            Inner::Wall(start, end) => {
                end.unwrap_or_else(Instant::now)
                    .duration_since(*start)
                    .as_secs_f64()
                    * 1e3
            }
            #[cfg(feature = "cuda")]
            Inner::Events(start, end, _) => end
                .as_ref()
                .and_then(|e| {
                    e.synchronize().ok()?;
                    start.elapsed_ms(e).ok()
                })
                .map_or(0.0, f64::from),
        }
    }
}

#[cfg(feature = "cuda")]
fn timing_flags() -> candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags {
    candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_cpu_span_measures_between_start_and_stop() {
        let mut s = Span::start(&Device::Cpu);
        std::thread::sleep(Duration::from_millis(15));
        s.stop();
        let ms = s.ms();
        std::thread::sleep(Duration::from_millis(30));
        // Stopped: reading later gives the same length.
        assert_eq!(s.ms(), ms);
        assert!(ms >= 15.0, "{ms}");
    }
}

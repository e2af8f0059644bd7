//! Limits meant per process, shared by every reactor: open sockets in all,
//! and open sockets per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Counts sockets across reactors. Taken once per accept and once per close,
/// never on the event path.
pub(crate) struct Admission {
    open: AtomicUsize,
    max: usize,
    /// 0: no per-address limit, and no map kept.
    max_per_ip: usize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

impl Admission {
    pub fn new(max: usize, max_per_ip: usize) -> Admission {
        Admission {
            open: AtomicUsize::new(0),
            max,
            max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new socket from `ip`, or names the limit that refuses it.
    /// An admitted socket must be `release`d exactly once.
    pub fn admit(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err("limits.max_connections");
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_ip.entry(ip).or_insert(0);
            if *count as usize >= self.max_per_ip {
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err("limits.max_connections_per_ip");
            }
            *count += 1;
        }
        Ok(())
    }

    /// Uncounts a socket; `ip` is its address when a per-address limit is
    /// set (the caller keeps addresses only then).
    pub fn release(&self, ip: Option<IpAddr>) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = ip.filter(|_| self.max_per_ip > 0) {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn total_and_per_address_limits() {
        let admission = Admission::new(3, 2);
        assert_eq!(admission.admit(A), Ok(()));
        assert_eq!(admission.admit(A), Ok(()));
        assert_eq!(admission.admit(A), Err("limits.max_connections_per_ip"));
        assert_eq!(admission.admit(B), Ok(()));
        assert_eq!(admission.admit(B), Err("limits.max_connections"));
        admission.release(Some(A));
        assert_eq!(admission.admit(B), Ok(()));
        admission.release(Some(A));
        admission.release(Some(B));
        admission.release(Some(B));
        assert!(admission.per_ip.lock().unwrap().is_empty(), "no entry left");
        assert_eq!(admission.open.load(Ordering::Relaxed), 0);
    }
}

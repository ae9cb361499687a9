//! `busbar._core`: the Rust half of the Python package `busbar`. One
//! implementation (busbar-client on Busbar's own tokio runtime) behind both
//! faces; `python/busbar/` holds the thin Python layer, typing and docs.

mod bridge;
mod connection;
mod convert;
mod data;
mod loop_io;
mod mesh;
mod sql;
mod streams;
mod transport;

use pyo3::prelude::*;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// `mutex` locked, poisoned or not: a panic while it was held is reported
/// where it happened, and what it guards stays usable.
pub(crate) fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(connection::connect, module)?)?;
    module.add_function(wrap_pyfunction!(bridge::at_exit, module)?)?;
    module.add_function(wrap_pyfunction!(bridge::set_spin_limit, module)?)?;
    module.add_function(wrap_pyfunction!(bridge::spin_limit, module)?)?;
    module.add_function(wrap_pyfunction!(mesh::interface_descriptors, module)?)?;
    module.add_class::<connection::Core>()?;
    module.add_class::<data::CoreSession>()?;
    module.add_class::<streams::CoreCall>()?;
    module.add_class::<streams::CoreSubscription>()?;
    module.add_class::<streams::CorePublisher>()?;
    module.add_class::<streams::CoreMembership>()?;
    module.add_class::<mesh::CoreProvider>()?;
    module.add_class::<mesh::CoreProviderCall>()?;
    module.add_class::<bridge::Doorbell>()?;
    module.add_class::<loop_io::LoopExec>()?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

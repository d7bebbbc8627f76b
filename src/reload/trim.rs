//! Hands the allocator's free memory back to the system after a load of the
//! whole store. A load of a million keys parses them into records that live
//! for a moment, and glibc keeps the pages they freed (its heap can only
//! shrink from the top, and records sit under the index's long-lived
//! allocations): without this a gateway settles about 150 MB above its live
//! set after a few reloads (PERFORMANCE.md, "Large stores"). `malloc_trim`
//! releases every whole free page of every arena. Elsewhere: nothing.
//!
//! With `loader`'s `setpriority`, the only `unsafe` in the crate: FFI calls
//! that take no pointer.

/// Returns free heap pages to the system; takes a few milliseconds for a
/// heap of a few hundred megabytes, so it runs once per full load, on the
/// loader thread once the replaced index is freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own free
    // lists under glibc's own locks; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

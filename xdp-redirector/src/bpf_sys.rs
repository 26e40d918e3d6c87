//! The few `bpf(2)` commands aya 0.14 does not expose publicly: walk the
//! kernel's bpf_links to find the one that owns a device's XDP program,
//! detach a link by descriptor or id, and read a program's name by id.
//!
//! `bpf_attr` is a union; each command below fills only its own leading
//! fields, and the kernel treats a shorter attr as zero-padded.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;

const BPF_LINK_TYPE_XDP: u32 = 6;
/// `sizeof(struct bpf_link_info)`; `type` at 0, `prog_id` at 8, `xdp.ifindex` at 16.
const LINK_INFO_LEN: usize = 48;
/// `sizeof(struct bpf_prog_info)`; `name[16]` at 64.
const PROG_INFO_LEN: usize = 232;
const PROG_NAME_OFF: usize = 64;
const BPF_OBJ_NAME_LEN: usize = 16;

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised buffer of the length we pass; the
    // kernel reads at most that many bytes and writes only inside it, or into
    // the user buffers an attr points at, which callers keep alive.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn put_u32(attr: &mut [u8], off: usize, v: u32) {
    attr[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(buf: &[u8], off: usize) -> u32 {
    buf.get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn fd_from(rc: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(rc).map_err(|_| io::Error::other("bpf(2) returned an invalid fd"))?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `*_GET_FD_BY_ID`: `{ u32 id; u32 next_id; u32 open_flags; }`.
fn fd_by_id(cmd: libc::c_long, id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 12];
    put_u32(&mut attr, 0, id);
    sys_bpf(cmd, &mut attr).and_then(fd_from)
}

fn obj_info(fd: BorrowedFd<'_>, info: &mut [u8]) -> io::Result<()> {
    // { u32 bpf_fd; u32 info_len; u64 info; }
    let mut attr = [0u8; 16];
    let fd = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))?;
    put_u32(&mut attr, 0, fd);
    put_u32(
        &mut attr,
        4,
        u32::try_from(info.len()).map_err(|_| io::Error::other("info buffer too large"))?,
    );
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

/// The next bpf_link id after `start`, or `None` at the end of the list.
fn link_next_id(start: u32) -> io::Result<Option<u32>> {
    let mut attr = [0u8; 12];
    put_u32(&mut attr, 0, start);
    match sys_bpf(BPF_LINK_GET_NEXT_ID, &mut attr) {
        Ok(_) => Ok(Some(get_u32(&attr, 4))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Finds a live XDP bpf_link running program `prog_id` on `ifindex`.
///
/// bpf_link_info carries only the ifindex, not the network namespace, so a
/// link on a device with the same index in another namespace running the
/// same program id would also match; with program ids being unique per load
/// this needs one program instance shared across namespaces on equal indexes.
pub(crate) fn find_xdp_link(ifindex: u32, prog_id: u32) -> io::Result<Option<OwnedFd>> {
    let mut id = 0;
    while let Some(next) = link_next_id(id)? {
        id = next;
        let fd = match fd_by_id(BPF_LINK_GET_FD_BY_ID, id) {
            Ok(fd) => fd,
            // The link went away between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let mut info = [0u8; LINK_INFO_LEN];
        obj_info(std::os::fd::AsFd::as_fd(&fd), &mut info)?;
        if get_u32(&info, 0) == BPF_LINK_TYPE_XDP
            && get_u32(&info, 8) == prog_id
            && get_u32(&info, 16) == ifindex
        {
            return Ok(Some(fd));
        }
    }
    Ok(None)
}

/// `BPF_LINK_DETACH`: the device drops the program; the link object stays
/// (defunct) until its last fd or pin goes.
pub(crate) fn link_detach(link: &OwnedFd) -> io::Result<()> {
    let mut attr = [0u8; 4];
    let fd = u32::try_from(link.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))?;
    put_u32(&mut attr, 0, fd);
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// `BPF_LINK_DETACH` on the link with id `link_id`, through a descriptor of
/// our own. Closing a link's descriptor detaches only when it was the last
/// reference, and a child process forked by another thread (between fork and
/// exec) briefly holds one too; an explicit detach does not depend on that.
pub(crate) fn link_detach_by_id(link_id: u32) -> io::Result<()> {
    let fd = fd_by_id(BPF_LINK_GET_FD_BY_ID, link_id)?;
    link_detach(&fd)
}

/// The name of loaded program `prog_id` (at most 15 bytes, as the kernel keeps it).
pub(crate) fn prog_name(prog_id: u32) -> io::Result<String> {
    let fd = fd_by_id(BPF_PROG_GET_FD_BY_ID, prog_id)?;
    let mut info = [0u8; PROG_INFO_LEN];
    obj_info(std::os::fd::AsFd::as_fd(&fd), &mut info)?;
    let name = &info[PROG_NAME_OFF..PROG_NAME_OFF + BPF_OBJ_NAME_LEN];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

// Package oci reads container images — OCI archives and layouts, docker
// save archives and images in a registry — and applies their layers onto
// a directory tree that becomes a banger image's root filesystem.
//
// Everything an image holds is hostile: manifests and configs are
// checked against their digests, layers against theirs and the config's
// diff IDs, and the applier writes only beneath the root, never through
// a symbolic link an image made, and refuses names that climb out with
// "..". It runs no host command; internal/image turns the tree into an
// image.
package oci

// Package image turns an OCI image into containers that runckit runs, with
// no daemon: pull it from a registry (credentials from the docker config),
// or read an OCI image layout directory or a `docker save` tarball
// (Store.Pull, Store.FromLayout, Store.FromTarball); keep its layers in a
// content-addressed Store shared by tests, packages and runs, and unpack
// its root filesystem once per stack of layers, with whiteouts, hard links,
// ownership, modes and xattrs; give each container a writable overlayfs
// layer of its own over it and a spec from the image config (Image.Options,
// Image.Spec), or start it for a test (Image.Start).
//
// It is a module of its own so that runckit itself does not depend on
// go-containerregistry.
package image

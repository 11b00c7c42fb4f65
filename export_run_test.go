package runckit

// SetExecSeq sets the counter behind the exec IDs of Cmd runs, so that an
// external test can make the next generated ID collide with one it holds.
func SetExecSeq(n uint64) { execSeq.Store(n) }

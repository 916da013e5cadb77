use floxide::*;

#[derive(Default, Merge)]
pub enum State {
    #[default]
    Idle,
    Busy(u32),
}

fn main() {
    let _ = State::Busy(1);
}

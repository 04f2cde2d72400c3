#pragma once
// Command-line entry points. Each returns the process exit code.

namespace portcullis::app {

// portcullis [--config FILE] [--check-config] [--version] | demo ... | echo-upstream ...
int main_entry(int argc, char** argv);

}  // namespace portcullis::app

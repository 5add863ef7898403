"""Evidence a person hands to an auditor: per Run a signed in-toto Statement of what ran, who
approved and what it cost, beside the Run's audit rows, checkable offline (`nofx evidence`)."""

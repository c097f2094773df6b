"""AWS: IAM access key pairs (`aws_iam`) and Amazon Bedrock long-term API keys (`aws_bedrock`).

One module a reason to change:
- `errors`: what AWS's error codes and messages say about a credential (one table for both adapters);
- `boto`: boto3 clients, built once and called off the event loop; the only module that touches boto3;
- `base`: what both adapters share: management accounts, regions, the IAM client and its call errors;
- `iam`: `AwsIamAdapter`, the STS probe and the compromise (quarantine policy) check;
- `bedrock`: `AwsBedrockAdapter`, the bearer-token probe and the service-specific credential records.

boto3 is imported only inside methods, so this package imports without it; nothing here imports an
adapter, so naming a module of the package loads only what that module needs.
"""

// Data collection rule of kind Direct: the Logs Ingestion API entry point (its own ingestion
// endpoint, no DCE). Rows pass through unchanged (transformKql 'source') into the custom table.

@description('DCR name.')
param name string

@description('Region of the Log Analytics workspace; a DCR must be in its destination workspace region.')
param location string

@description('Resource id of the destination Log Analytics workspace.')
param workspaceResourceId string

@description('Output stream: Custom-<table name>.')
param outputStream string

param tags object = {}

// The stream the connector posts to (shared/schema.py DEFAULT_STREAM_NAME).
var streamName = 'Custom-PulumiAuditLogs'

resource dcr 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: name
  location: location
  kind: 'Direct'
  tags: tags
  properties: {
    description: 'Pulumi Cloud audit events sent by the connector Function App.'
    streamDeclarations: {
      // Exactly the row the code sends: shared/schema.py COLUMNS (tests/test_infra.py checks it).
      'Custom-PulumiAuditLogs': {
        columns: [
          { name: 'TimeGenerated', type: 'datetime' }
          { name: 'Timestamp_d', type: 'long' }
          { name: 'SourceIP_s', type: 'string' }
          { name: 'Event_s', type: 'string' }
          { name: 'Description_s', type: 'string' }
          { name: 'UserName_s', type: 'string' }
          { name: 'UserLogin_s', type: 'string' }
          { name: 'UserAvatarUrl_s', type: 'string' }
          { name: 'TokenID_s', type: 'string' }
          { name: 'TokenName_s', type: 'string' }
          { name: 'ActorName_s', type: 'string' }
          { name: 'ActorUrn_s', type: 'string' }
          { name: 'RequireOrgAdmin_b', type: 'boolean' }
          { name: 'RequireStackAdmin_b', type: 'boolean' }
          { name: 'AuthFailure_b', type: 'boolean' }
          { name: 'OrgName_s', type: 'string' }
          { name: 'EventId_s', type: 'string' }
          { name: 'Product_s', type: 'string' }
          { name: 'Category_s', type: 'string' }
          { name: 'EventTime_t', type: 'datetime' }
          { name: 'RawEvent_s', type: 'string' }
        ]
      }
    }
    destinations: {
      logAnalytics: [
        {
          name: 'sentinelWorkspace'
          workspaceResourceId: workspaceResourceId
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          streamName
        ]
        destinations: [
          'sentinelWorkspace'
        ]
        transformKql: 'source'
        outputStream: outputStream
      }
    ]
  }
}

output name string = dcr.name
output logsIngestionEndpoint string = dcr.properties.endpoints.logsIngestion
output immutableId string = dcr.properties.immutableId
output streamName string = streamName
